"""OpenAI's ``/v1`` routes: completions, chat completions, models, and the embeddings placeholder."""
from __future__ import annotations

from fastapi import APIRouter, Request

from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.openai.protocol import APIError, ChatCompletionRequest, CompletionRequest
from pagedllm.entrypoints.openai.routes.http_io import answer, cancel_on_disconnect, parse
from pagedllm.entrypoints.openai.serving_chat import ServingChat
from pagedllm.entrypoints.openai.serving_completion import ServingCompletion


def openai_router(engine: AsyncEngine, names: list[str], chat: ServingChat) -> APIRouter:
    router = APIRouter()
    completions = ServingCompletion(engine, names)
    completions.models = models = chat.models  # one set of names (base + LoRA adapters) for every handler

    @router.post("/v1/completions")
    async def create_completion(request: Request):
        req = await parse(request, CompletionRequest)
        return answer(await cancel_on_disconnect(request, completions.create(req)), request)

    @router.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        req = await parse(request, ChatCompletionRequest)
        return answer(await cancel_on_disconnect(request, chat.create(req)), request)

    @router.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": models.cards(engine.engine.config.model, engine.max_model_len)}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        chat.model_name(model_id)
        return next(c for c in models.cards(engine.engine.config.model, engine.max_model_len) if c["id"] == model_id)

    @router.api_route("/v1/embeddings", methods=["POST"])
    async def embeddings():
        raise APIError("embeddings are not served yet by pagedllm (they come with their own issue)",
                       status_code=404, type="NotFoundError", code="not_implemented")

    return router
