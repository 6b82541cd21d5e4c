"""OpenAI's ``/v1`` routes: completions, chat completions, embeddings and models; vLLM's ``/pooling``.

Each request goes to the served model (or LoRA adapter) its ``model`` names (``served_models``).
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, PoolingRequest
from pagedllm.entrypoints.openai.routes.http_io import answer, cancel_on_disconnect, parse
from pagedllm.entrypoints.openai.served_models import ServedModels


def openai_router(models: ServedModels) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions")
    async def create_completion(request: Request):
        req = await parse(request, CompletionRequest)
        served = models.get(req.model, "generate", "/v1/completions")
        return answer(await cancel_on_disconnect(request, served.completions.create(req)), request)

    @router.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        req = await parse(request, ChatCompletionRequest)
        served = models.get(req.model, "generate", "/v1/chat/completions")
        return answer(await cancel_on_disconnect(request, served.chat.create(req)), request)

    @router.post("/v1/embeddings")
    async def create_embedding(request: Request):
        req = await parse(request, EmbeddingRequest)
        served = models.get(req.model, "pooling", "/v1/embeddings")
        return answer(await cancel_on_disconnect(request, served.embeddings.create(req)), request)

    @router.post("/pooling")
    async def create_pooling(request: Request):
        req = await parse(request, PoolingRequest)
        served = models.get(req.model, "pooling", "/pooling")
        return answer(await cancel_on_disconnect(request, served.embeddings.create(req, pooling=True)), request)

    @router.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": models.cards()}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        models.get(model_id)  # 404 naming the served ones
        return next(c for c in models.cards() if c["id"] == model_id)

    return router
