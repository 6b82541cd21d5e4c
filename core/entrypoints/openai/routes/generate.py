"""vLLM's legacy ``POST /generate`` route (``python -m pagedllm.entrypoints.api_server`` serves it).

Body: ``{"prompt": str, "stream": bool, **SamplingParams fields}``; answer ``{"text": [prompt +
output, ...]}``, or with ``stream`` one such JSON object per line (cumulative), as vLLM's demo
server does. The OpenAI server mounts the same route, so one server covers both.
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.llm_engine import ContextWindowError, fit_context
from pagedllm.entrypoints.openai.protocol import APIError, random_id
from pagedllm.entrypoints.openai.serving_engine import check_capacity, engine_error
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


def generate_router() -> APIRouter:
    router = APIRouter()

    @router.post("/generate")
    async def generate(request: Request):
        engine = request.app.state.engine
        body = await request.body()
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise APIError("the request body must be a JSON object")
        prompt = payload.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt:
            raise APIError("`prompt` must be a non-empty string", param="prompt")
        stream = payload.pop("stream", False)
        if not isinstance(stream, bool):
            raise APIError("`stream` must be a bool", param="stream")
        try:
            params = SamplingParams.from_optional(**{**engine.engine.default_sampling_params, **payload})
        except (TypeError, ValueError) as exc:
            raise APIError(str(exc)) from exc
        params.output_kind = RequestOutputKind.CUMULATIVE
        ids = engine.tokenizer.encode(prompt)
        try:  # the one context-window rule (LLM.generate's and /v1/*'s); a default max_tokens is capped
            params.max_tokens = fit_context(len(ids), params.max_tokens, engine.max_model_len,
                                            strict="max_tokens" in payload)
        except ContextWindowError as exc:
            raise APIError(str(exc), param=exc.param) from None
        check_capacity(engine)  # 503 + Retry-After past max_waiting_requests, before the engine sees it
        results = engine.generate({"prompt_token_ids": ids}, params, random_id("generate"))  # tokenized once

        if stream:
            async def lines():
                try:
                    async for out in results:
                        yield json.dumps({"text": [prompt + c.text for c in out.outputs]}) + "\n"
                except Exception as exc:  # end with an error line, never silently
                    yield json.dumps(engine_error(exc).body()) + "\n"
                finally:
                    await results.aclose()
            return StreamingResponse(lines(), media_type="application/x-ndjson")

        final = None
        try:
            async for out in results:
                final = out
        except Exception as exc:
            raise engine_error(exc) from exc
        return JSONResponse({"text": [prompt + c.text for c in final.outputs]})

    return router
