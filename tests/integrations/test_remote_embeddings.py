"""The embedding adapters with ``base_url``/``api_url`` against one live server that hosts the bundled chat
model and the bundled MiniLM (what ``make serve`` runs), and the RAG chains over it.

Oracle for the vectors: sentence-transformers' ``encode``; for RAG, the invented fact in the answer.
"""
from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
from model_fixtures import BUNDLED, minilm_path
from rag_documents import ANSWER, ANSWERING_DOC, DOCS, QUESTION

from live_server import LiveServer

pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.slow  # a server with two engines, one of them the chat model
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Embeddings map text to vectors."]


@pytest.fixture(scope="module")
def server():
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    def engine(model, **kwargs):
        return AsyncEngine.from_config(EngineConfig.from_kwargs(model=model, dtype="float32", **kwargs))

    chat, embedder = engine(BUNDLED, kv_cache_memory=64 << 20, max_model_len=1024), engine(MINILM)
    live = LiveServer(build_app(chat, [BUNDLED], also=[(embedder, [MINILM])]), chat)
    yield live
    live.stop()
    embedder.shutdown()


@pytest.fixture(scope="module")
def st():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


def assert_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5


def test_langchain_remote_equals_sentence_transformers(server, st):
    from pagedllm.integrations.langchain import VLLMEmbeddings

    remote = VLLMEmbeddings(base_url=server.url, api_key="EMPTY")  # the default model name is served
    want = st.encode(TEXTS)
    assert remote.provider.info.name == MINILM
    assert_close(remote.embed_documents(TEXTS), want)
    assert_close(remote.embed_query(TEXTS[0]), want[0])

    async def both():
        return await asyncio.gather(remote.aembed_documents(TEXTS), remote.aembed_query(TEXTS[1]))

    docs, query = asyncio.run(both())
    assert_close(docs, want)
    assert_close(query, want[1])
    long = "word " * 300
    cut = VLLMEmbeddings(base_url=server.url, truncate_prompt_tokens=-1).embed_query(long)
    assert_close(cut, st.encode(long))


def test_llama_index_remote_equals_sentence_transformers(server, st):
    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    remote = VllmEmbedding(api_url=server.base)  # llama-index's api_url: the server root, /v1 is added
    want = st.encode(TEXTS)
    assert_close(remote.get_text_embedding_batch(TEXTS), want)
    assert_close(asyncio.run(remote.aget_query_embedding(TEXTS[2])), want[2])


def test_remote_chat_model_asked_to_embed_names_the_runner(server):
    from pagedllm.integrations.langchain import VLLMEmbeddings

    with pytest.raises(openai.BadRequestError, match="runner='generate'"):
        VLLMEmbeddings(model=BUNDLED, base_url=server.url).embed_query("hi")


def test_langchain_rag_over_the_server(server):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from pagedllm.integrations.langchain import ChatVLLM, VLLMEmbeddings

    store = InMemoryVectorStore.from_texts(DOCS, VLLMEmbeddings(base_url=server.url))
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert [d.page_content for d in retriever.invoke(QUESTION)] == [ANSWERING_DOC]
    prompt = ChatPromptTemplate.from_messages([("system", "Answer the question using only this context:\n{context}"),
                                               ("human", "{question}")])
    llm = ChatVLLM(model=BUNDLED, base_url=server.url, temperature=0, max_tokens=48)
    context = retriever | (lambda docs: "\n\n".join(d.page_content for d in docs))
    chain = {"context": context, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    answer = chain.invoke(QUESTION)
    assert ANSWER in answer, answer


def test_llama_index_rag_over_the_server(server):
    from llama_index.core import Document, VectorStoreIndex

    from pagedllm.integrations.llama_index import Vllm
    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS],
                                            embed_model=VllmEmbedding(api_url=server.base))
    llm = Vllm(model=BUNDLED, api_url=server.base, temperature=0, max_new_tokens=48)
    response = index.as_query_engine(llm=llm, similarity_top_k=2).query(QUESTION)
    assert response.source_nodes[0].node.get_content() == ANSWERING_DOC
    assert ANSWER in str(response), str(response)
