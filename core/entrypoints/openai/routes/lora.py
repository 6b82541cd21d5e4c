"""vLLM's runtime LoRA routes, mounted only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` (as vLLM):
anyone who can reach the server could otherwise make it read folders of its disk."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from pagedllm.entrypoints.openai.protocol import APIError, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from pagedllm.entrypoints.openai.routes.http_io import parse
from pagedllm.entrypoints.openai.serving_models import ServingModels


def lora_router(models: ServingModels) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        req = await parse(request, LoadLoRAAdapterRequest)
        try:  # reading the folder is file I/O: off the event loop
            await asyncio.to_thread(models.add_lora, req.lora_name, req.lora_path)
        except ValueError as exc:
            raise APIError(str(exc), param="lora_path", code="invalid_lora_adapter") from None
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @router.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        req = await parse(request, UnloadLoRAAdapterRequest)
        models.remove_lora(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return router
