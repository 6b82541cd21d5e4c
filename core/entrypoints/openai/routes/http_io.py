"""Request bodies in and answers out, shared by the route groups."""
from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pagedllm.entrypoints.openai.errors import validation_error


async def parse(request: Request, model: type[BaseModel]):
    """Validate the raw body (bytes): bad JSON/UTF-8/types all become a 400, never FastAPI's 422."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def cancel_on_disconnect(request: Request, work):
    """Run ``work`` (after the body was read) but cancel it, aborting its engine requests, if the client leaves.

    Streaming answers return at once (StreamingResponse watches for disconnects itself); a
    non-streaming one generates here, so a client that times out must not leave it running.
    """
    task = asyncio.ensure_future(work)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    return task.result()


def answer(result):
    """A Response as is, a pydantic model as JSON, anything else (an async iterator) as SSE."""
    if isinstance(result, Response):
        return result
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json"))
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
