"""vLLM's ``/tokenize`` and ``/detokenize``: the served model's tokenizer and chat template over HTTP."""
from __future__ import annotations

from fastapi import APIRouter, Request

from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.openai.protocol import APIError, DetokenizeRequest, TokenizeRequest
from pagedllm.entrypoints.openai.routes.http_io import parse
from pagedllm.entrypoints.openai.serving_chat import ServingChat


def tokenize_router(engine: AsyncEngine, chat: ServingChat) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize(request: Request):
        req = await parse(request, TokenizeRequest)
        chat.model_name(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError("send exactly one of `prompt` or `messages`", param="prompt")
        if req.messages is not None:
            ids = chat.render(req.messages, add_generation_prompt=req.add_generation_prompt is not False)
        else:
            ids = engine.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @router.post("/detokenize")
    async def detokenize(request: Request):
        req = await parse(request, DetokenizeRequest)
        chat.model_name(req.model)
        vocab = chat.vocab_size
        if any(t >= vocab for t in req.tokens):
            raise APIError(f"token ids must be in 0..{vocab - 1}", param="tokens")
        return {"prompt": engine.tokenizer.decode(req.tokens)}

    return router
