"""LangChain VLLM in LCEL chains on the bundled model: invoke, a batch of 8 in one engine batch, stream."""
from __future__ import annotations

import asyncio

import pytest
from model_fixtures import BUNDLED

pytestmark = pytest.mark.slow  # loads the bundled model


@pytest.fixture(scope="module")
def llm():
    from pagedllm.integrations.langchain import VLLM

    return VLLM(model=BUNDLED, max_new_tokens=16, temperature=0, dtype="float32")


@pytest.fixture(scope="module")
def chain(llm):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    return PromptTemplate.from_template("The capital of {country} is") | llm | StrOutputParser()


def test_invoke_and_stream(chain):
    text = chain.invoke({"country": "France"})
    assert "Paris" in text
    parts = list(chain.stream({"country": "France"}))
    assert len(parts) > 3 and "".join(parts) == text


def test_batch_of_8_is_one_engine_batch(chain, llm):
    stats = llm.provider.engine.engine.stats
    stats.max_batch_size = 0
    countries = ["France", "Italy", "Spain", "Germany", "Japan", "Canada", "Egypt", "Peru"]
    texts = chain.batch([{"country": c} for c in countries])
    assert len(texts) == 8 and all(texts)
    assert stats.max_batch_size == 8  # all eight decoded in the same engine steps
    assert texts[0] == chain.invoke({"country": "France"})


def test_generate_info_n_and_async(llm):
    result = llm.generate(["The capital of France is"], n=3, temperature=0.8, seed=1)
    assert len(result.generations[0]) == 3  # n>1 -> several generations
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] in ("stop", "length") and info["token_usage"]["completion_tokens"] > 0
    assert result.llm_output["model_name"] == BUNDLED
    assert llm._identifying_params["model"] == BUNDLED
    whole = llm.invoke("The capital of France is")
    assert asyncio.run(llm.ainvoke("The capital of France is")) == whole

    async def astream():
        return "".join([c async for c in llm.astream("The capital of France is")])

    assert asyncio.run(astream()) == whole


def test_seed_example():
    from pagedllm.integrations.langchain import VLLM

    llm = VLLM(model=BUNDLED, trust_remote_code=True, max_new_tokens=128, top_k=10, top_p=0.95, temperature=0.8)
    assert isinstance(llm.invoke("What is the capital of France ?"), str)  # sampled: may be short, even empty
    info = llm.generate(["What is the capital of France ?"]).generations[0][0].generation_info
    assert info["finish_reason"] in ("stop", "length") and info["token_usage"]["prompt_tokens"] > 0


def test_chat_shares_the_engine(llm):
    from pagedllm.integrations.langchain import ChatVLLM

    chat = ChatVLLM(model=BUNDLED, temperature=0, max_tokens=12, dtype="float32")
    message = chat.invoke("What is the capital of France?")
    assert chat.provider.engine is llm.provider.engine  # one engine per config per process
    assert message.usage_metadata["output_tokens"] > 0 and message.response_metadata["model_name"] == BUNDLED
