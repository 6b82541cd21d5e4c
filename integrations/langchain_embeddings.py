"""LangChain ``VLLMEmbeddings``: an ``Embeddings`` over a pagedllm Provider.

In-process by default (the shared engine, so concurrent calls and documents batch together), or any
OpenAI-compatible server (``pagedllm serve``, vLLM) when ``base_url`` is given.
"""
from __future__ import annotations

from langchain_core.embeddings import Embeddings
from pydantic import PrivateAttr, SecretStr

from pagedllm.integrations.embedding_fields import DEFAULT_EMBEDDING_MODEL, EmbeddingFields
from pagedllm.integrations.langchain_common import _provider
from pagedllm.provider import Provider


class VLLMEmbeddings(EmbeddingFields, Embeddings):
    """Embeddings on pagedllm: ``VLLMEmbeddings()`` is the bundled all-MiniLM-L6-v2, in-process.

    The name follows LangChain's ``<Provider>Embeddings`` (``OpenAIEmbeddings``, ``OllamaEmbeddings``,
    ``HuggingFaceEmbeddings``) with the provider spelled as in its ``VLLM`` LLM, which is what a LangChain
    user looks for; langchain-community has no vLLM embedding class (people point ``OpenAIEmbeddings`` at
    a vLLM server), so there are no fields to copy beyond the engine ones ``VLLM`` already has.
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    """Embedding model (hub id, bundled name, local folder); on a server, the served name."""
    base_url: str | None = None
    """An OpenAI-compatible server (``http://host:8000/v1``) instead of the in-process engine."""
    api_key: SecretStr | None = None
    """The server's API key (with ``base_url``; default: ``$OPENAI_API_KEY``, as the OpenAI clients read it)."""
    timeout: float | None = None
    """Seconds a request to a server may take (with ``base_url``)."""
    max_retries: int = 2
    """Retries of a failed request to a server (with ``base_url``)."""

    _provider_cache: Provider | None = PrivateAttr(default=None)

    @property
    def provider(self) -> Provider:
        return _provider(self, self.model, self._engine_kwargs())

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.provider.embed(texts, **self._embed_options())

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.provider.aembed(texts, **self._embed_options())

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]
