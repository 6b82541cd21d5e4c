"""vLLM's ``/tokenize`` and ``/detokenize``: the served model's tokenizer and chat template over HTTP."""
from __future__ import annotations

from fastapi import APIRouter, Request

from pagedllm.entrypoints.openai.protocol import APIError, DetokenizeRequest, TokenizeRequest
from pagedllm.entrypoints.openai.routes.http_io import parse
from pagedllm.entrypoints.openai.served_models import ServedModels


def tokenize_router(models: ServedModels) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize(request: Request):
        req = await parse(request, TokenizeRequest)
        served = models.get(req.model)
        engine = served.engine
        if (req.prompt is None) == (req.messages is None):
            raise APIError("send exactly one of `prompt` or `messages`", param="prompt")
        if req.messages is not None:
            if served.chat is None:
                raise APIError(f"model `{served.names[0]}` is an embedding model: it has no chat template to render "
                               "`messages`; send `prompt`", param="messages")
            ids = served.chat.render(req.messages, add_generation_prompt=req.add_generation_prompt is not False)
        else:
            ids = engine.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @router.post("/detokenize")
    async def detokenize(request: Request):
        req = await parse(request, DetokenizeRequest)
        engine = models.get(req.model).engine
        vocab = engine.engine.hf_config.vocab_size
        if any(t >= vocab for t in req.tokens):
            raise APIError(f"token ids must be in 0..{vocab - 1}", param="tokens")
        return {"prompt": engine.tokenizer.decode(req.tokens)}

    return router
