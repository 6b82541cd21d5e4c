"""VLLM/ChatVLLM(base_url=...) against a loopback server give the in-process greedy text."""
from __future__ import annotations


import pytest

from live_server import TINY_MAX_MODEL_LEN, server, tiny_model_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # builds two engines
ENGINE = dict(dtype="float32", kv_cache_memory=16 << 20, max_model_len=TINY_MAX_MODEL_LEN, seed=0,
              served_model_name="tiny")


def test_vllm_remote_equals_local(server, tiny_model_dir):
    from pagedllm.integrations.langchain import VLLM

    local = VLLM(model=tiny_model_dir, max_new_tokens=12, temperature=0, vllm_kwargs=ENGINE)
    remote = VLLM(base_url=server.url, api_key="x", max_new_tokens=12, temperature=0)
    prompt = "The capital of France is"
    assert remote.provider.info.name == "tiny" and remote.provider.info.context_window == TINY_MAX_MODEL_LEN
    assert remote.invoke(prompt) == local.invoke(prompt)
    assert "".join(remote.stream(prompt)) == local.invoke(prompt)
    result = remote.generate([prompt])
    assert result.generations[0][0].generation_info["token_usage"]["completion_tokens"] == 12


def test_chat_remote_equals_local(server, tiny_model_dir):
    from pagedllm.integrations.langchain import ChatVLLM

    local = ChatVLLM(model=tiny_model_dir, max_tokens=12, temperature=0, vllm_kwargs=ENGINE)
    remote = ChatVLLM(model="tiny", base_url=server.url, max_tokens=12, temperature=0)
    question = "Tell me about paged attention."
    expected = local.invoke(question)
    got = remote.invoke(question)
    assert got.content == expected.content and got.usage_metadata == expected.usage_metadata
    chunks = list(remote.stream(question))
    assert "".join(c.content for c in chunks) == expected.content and chunks[-1].chunk_position == "last"
