"""LlamaIndex: a VectorStoreIndex over a few documents, embedded by pagedllm's VllmEmbedding (the bundled
MiniLM) and answered by pagedllm's Vllm (whole and streamed), all in this process.

The fact asked about is invented (``rag_documents``), so only the retrieved document can supply it; the
retriever is checked on its own too, since that part grades the embeddings.
"""
from __future__ import annotations

import asyncio

import pytest
from model_fixtures import BUNDLED
from rag_documents import ANSWER, ANSWERING_DOC, DOCS, QUESTION

# the bundled chat model loads in seconds once converted (the session converts it once): in the fast suite


@pytest.fixture(scope="module")
def llm():
    from pagedllm.integrations.llama_index import Vllm

    return Vllm(model=BUNDLED, temperature=0, max_new_tokens=48, dtype="float32")


@pytest.fixture(scope="module")
def index(llm):
    from llama_index.core import Document, Settings, VectorStoreIndex

    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    Settings.llm, Settings.embed_model = llm, VllmEmbedding(dtype="float32")
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS])


def test_retriever_finds_the_document_with_the_fact(index):
    nodes = index.as_retriever(similarity_top_k=1).retrieve(QUESTION)
    assert [n.node.get_content() for n in nodes] == [ANSWERING_DOC]


def test_metadata_from_engine(llm):
    meta = llm.metadata
    assert meta.context_window == llm.provider.engine.max_model_len and meta.context_window >= 2048
    assert meta.num_output == 48 and meta.is_chat_model and meta.model_name == BUNDLED


def test_query_engine_answers_from_documents(index):
    response = index.as_query_engine(similarity_top_k=2).query(QUESTION)
    assert response.source_nodes[0].node.get_content() == ANSWERING_DOC
    assert ANSWER in str(response), str(response)


def test_streaming_query(index):
    response = index.as_query_engine(similarity_top_k=2, streaming=True).query(QUESTION)
    pieces = list(response.response_gen)
    assert len(pieces) > 3 and ANSWER in "".join(pieces)


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
