"""An attention backend registered by a plugin after start-up is selected by ``attention_backend=``."""
from __future__ import annotations

import pytest

from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.plugins.hookspecs import hookimpl

PROMPTS = ["Hello, my name is", "The capital of France is a city where"]


class MockAttentionBackend(TorchAttentionBackend):
    """The torch backend, counting the layer calls it serves."""

    name = "mock"
    calls = 0

    def forward(self, *args, **kwargs):
        type(self).calls += 1
        return super().forward(*args, **kwargs)


class MockBackends:
    @hookimpl
    def register_attention_backends(self, register):
        register("mock", MockAttentionBackend)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from model_fixtures import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def _greedy(model: str, backend: str) -> list[list[int]]:
    from pagedllm import LLM, SamplingParams

    llm = LLM(model, dtype="float32", kv_cache_memory=8 << 20, max_model_len=128, attention_backend=backend)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs]


def test_backend_registered_later_is_selected(tiny_llama, register_plugin):
    import torch

    from pagedllm.attention import get_attention_backend

    with pytest.raises(ValueError, match="'mock' is not available"):  # consulted before the plugin came
        get_attention_backend("mock", torch.device("cpu"))
    register_plugin(MockBackends(), "mock-backends")
    assert get_attention_backend("mock", torch.device("cpu")) is MockAttentionBackend

    before = MockAttentionBackend.calls
    got = _greedy(tiny_llama, "mock")
    # 2 layers x (one prefill step + five decode steps), both prompts in each step
    assert MockAttentionBackend.calls - before == 2 * 6
    assert got == _greedy(tiny_llama, "torch")


def test_unregistered_backend_is_gone(register_plugin):
    import torch

    from pagedllm.attention import get_attention_backend
    from pagedllm.plugins.manager import pm

    register_plugin(MockBackends(), "mock-backends")
    assert get_attention_backend("mock", torch.device("cpu")) is MockAttentionBackend
    pm.unregister(name="mock-backends")
    with pytest.raises(ValueError, match="'mock' is not available"):
        get_attention_backend("mock", torch.device("cpu"))
