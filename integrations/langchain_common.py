"""What the LangChain adapters (``VLLM``, ``ChatVLLM``, ``VLLMEmbeddings``) share: their provider, built on first
use, and usage dicts."""
from __future__ import annotations

from pagedllm.provider import Provider, Usage, get_provider


def _provider(owner, model: str | None, engine_kwargs: dict) -> Provider:
    """The owner's provider, built on first use (loading a model is not done at construction)."""
    if owner._provider_cache is None:
        api_key = owner.api_key.get_secret_value() if owner.api_key is not None else None
        owner._provider_cache = get_provider(model or None, base_url=owner.base_url, api_key=api_key,
                                             timeout=getattr(owner, "timeout", None),
                                             max_retries=getattr(owner, "max_retries", 2), **engine_kwargs)
    return owner._provider_cache


def _usage_dict(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}
