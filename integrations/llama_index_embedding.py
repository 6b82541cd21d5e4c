"""LlamaIndex adapter: ``VllmEmbedding``, a ``BaseEmbedding`` over a pagedllm Provider.

Named and shaped as ``llama_index.embeddings.vllm.VllmEmbedding`` (``model_name``, ``embed_batch_size``
and vLLM's engine fields), so changing the import is the migration; but the default model is the bundled
all-MiniLM-L6-v2 (offline), the async methods do not block the loop, and ``api_url`` points it at a server.
"""
from __future__ import annotations

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from pagedllm.integrations.embedding_fields import DEFAULT_EMBEDDING_MODEL, EmbeddingFields
from pagedllm.integrations.llama_index_common import llama_index_provider
from pagedllm.provider import Provider


class VllmEmbedding(EmbeddingFields, BaseEmbedding):
    """``Settings.embed_model = VllmEmbedding()``; each batch of ``embed_batch_size`` texts is queued at once,
    so the engine embeds it in shared steps."""

    model_name: str = DEFAULT_EMBEDDING_MODEL
    """Embedding model (hub id, bundled name, local folder); on a server, the served name."""
    api_url: str = ""
    """An OpenAI-compatible server (``http://host:8000`` or ``.../v1``) instead of the in-process engine."""
    api_key: str | None = None
    """The server's API key (with ``api_url``; default: ``$OPENAI_API_KEY``, as the OpenAI clients read it)."""

    _provider: Provider | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "pagedllm_VllmEmbedding"

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = llama_index_provider(self.model_name, self.api_url, self.api_key, self._engine_kwargs())
        return self._provider

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.provider.embed(texts, **self._embed_options())

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self.provider.aembed(texts, **self._embed_options())

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._aget_text_embeddings([query]))[0]
