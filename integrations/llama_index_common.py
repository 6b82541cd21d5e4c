"""What the LlamaIndex adapters (``Vllm``, ``VllmEmbedding``) share: their provider, from ``api_url`` or the engine."""
from __future__ import annotations

from pagedllm.provider import Provider, get_provider


def server_base(api_url: str) -> str:
    """llama-index's ``api_url`` (often ``.../generate``) as an OpenAI base URL (``.../v1``)."""
    base = api_url.rstrip("/").removesuffix("/generate").removesuffix("/v1")
    return base + "/v1"


def llama_index_provider(model: str, api_url: str, api_key: str | None, engine_kwargs: dict) -> Provider:
    """A server's provider when ``api_url`` is set (the served ``model``, or its only one), else the engine's."""
    if api_url:
        return get_provider(model or None, base_url=server_base(api_url), api_key=api_key)
    return get_provider(model, **engine_kwargs)
