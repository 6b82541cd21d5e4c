"""Request bodies in and answers out, shared by the route groups."""
from __future__ import annotations

import asyncio
import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pagedllm.entrypoints.openai.errors import validation_error
from pagedllm.names import did_you_mean, model_field_names

logger = logging.getLogger(__name__)
# Names of the request's top-level fields that the server ignored (comma-separated), on every answer.
IGNORED_FIELDS_HEADER = "x-pagedllm-ignored-fields"


async def parse(request: Request, model: type[BaseModel]):
    """Validate the raw body (bytes): bad JSON/UTF-8/types all become a 400, never FastAPI's 422.

    Unknown top-level fields are ignored, as OpenAI and vLLM do, but never in silence: a warning
    names them (vLLM's), with a "did you mean", and ``answer`` lists them in ``IGNORED_FIELDS_HEADER``.
    """
    body = await request.body()
    try:
        req = model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    accepted = model_field_names(model)
    ignored = [k for k in json.loads(body) if k not in accepted]
    request.state.ignored_fields = ignored
    if ignored:
        logger.warning("The following fields were present in the request but ignored: %s",
                       ", ".join(f"{k!r}{did_you_mean(k, accepted)}" for k in ignored))
    return req


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


def answer(result, request: Request | None = None):
    """A Response as is, a pydantic model or a dict as JSON, anything else (an async iterator) as SSE;
    the fields ``parse`` ignored in ``request`` are listed in the ``IGNORED_FIELDS_HEADER`` header."""
    ignored = getattr(request.state, "ignored_fields", None) if request is not None else None
    # JSON string escapes keep the header ASCII (latin-1 is all a header can carry), whatever the names
    headers = {IGNORED_FIELDS_HEADER: ", ".join(json.dumps(k)[1:-1] for k in ignored)} if ignored else {}
    if isinstance(result, Response):
        result.headers.update(headers)
        return result
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json"), headers=headers)
    if isinstance(result, dict):
        return JSONResponse(result, headers=headers)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
