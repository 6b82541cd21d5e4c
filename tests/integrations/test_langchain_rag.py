"""LangChain: a retrieval chain over an ``InMemoryVectorStore``, embedded by pagedllm's VLLMEmbeddings (the
bundled MiniLM) and answered by pagedllm's ChatVLLM (the bundled SmolLM2), all in this process.

The fact asked about is invented (``rag_documents``), so only the retrieved document can supply it.
"""
from __future__ import annotations

import asyncio

import pytest
from model_fixtures import BUNDLED
from rag_documents import ANSWER, ANSWERING_DOC, DOCS, QUESTION

pytest.importorskip("langchain_core")
# the bundled chat model loads in seconds once converted (the session converts it once): in the fast suite


@pytest.fixture(scope="module")
def retriever():
    from langchain_core.vectorstores import InMemoryVectorStore

    from pagedllm.integrations.langchain import VLLMEmbeddings

    return InMemoryVectorStore.from_texts(DOCS, VLLMEmbeddings(dtype="float32")).as_retriever(search_kwargs={"k": 1})


@pytest.fixture(scope="module")
def chain(retriever):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from pagedllm.integrations.langchain import ChatVLLM

    prompt = ChatPromptTemplate.from_messages([("system", "Answer the question using only this context:\n{context}"),
                                               ("human", "{question}")])
    context = retriever | (lambda docs: "\n\n".join(d.page_content for d in docs))
    llm = ChatVLLM(model=BUNDLED, temperature=0, max_tokens=48, dtype="float32")
    return {"context": context, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()


def test_retriever_finds_the_document_with_the_fact(retriever):
    assert [d.page_content for d in retriever.invoke(QUESTION)] == [ANSWERING_DOC]
    assert [d.page_content for d in asyncio.run(retriever.ainvoke(QUESTION))] == [ANSWERING_DOC]


def test_chain_answers_from_the_document(chain):
    answer = chain.invoke(QUESTION)
    assert ANSWER in answer, answer
    assert asyncio.run(chain.ainvoke(QUESTION)) == answer  # greedy: the async path gives the same text
