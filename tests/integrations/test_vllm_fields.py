"""LangChain ``VLLM`` and LlamaIndex ``Vllm`` share their vLLM fields; every adapter field is described."""
from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.language_models import BaseChatModel, BaseLLM  # noqa: E402
from llama_index.core.llms.llm import LLM  # noqa: E402

from pagedllm.integrations.langchain import VLLM, ChatVLLM  # noqa: E402
from pagedllm.integrations.llama_index import Vllm  # noqa: E402

# vLLM's SamplingParams names for the wrappers' fields (max_new_tokens is vLLM's max_tokens)
SAMPLING = {"n": 2, "best_of": 3, "presence_penalty": 0.5, "frequency_penalty": 0.25, "temperature": 0.7,
            "top_p": 0.9, "top_k": 7, "stop": ["\n"], "ignore_eos": True, "max_new_tokens": 9, "logprobs": 2}


@pytest.mark.parametrize("cls, base", [(VLLM, BaseLLM), (ChatVLLM, BaseChatModel), (Vllm, LLM)])
def test_every_field_has_a_description(cls, base):
    own = set(cls.model_fields) - set(base.model_fields)
    assert own
    assert sorted(name for name in own if not cls.model_fields[name].description) == []


def test_langchain_and_llama_index_sample_alike():
    lc, li = VLLM(model="m", **SAMPLING), Vllm(model="m", **SAMPLING)
    expected = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in SAMPLING.items()}
    assert lc._params(None, {}) == li._params({})
    got = li._params({})
    assert {k: getattr(got, k) for k in expected} == expected


def test_same_defaults_and_engine_arguments():
    lc, li = VLLM(), Vllm()
    shared = set(VLLM.model_fields) & set(Vllm.model_fields) - {"model"}
    assert shared >= set(SAMPLING) | {"dtype", "tensor_parallel_size", "trust_remote_code", "download_dir",
                                      "vllm_kwargs"}
    assert {f: getattr(lc, f) for f in shared} == {f: getattr(li, f) for f in shared}
    kwargs = {"max_model_len": 64, "dtype": "float32"}
    assert VLLM(vllm_kwargs=kwargs)._engine_kwargs() == Vllm(vllm_kwargs=kwargs)._engine_kwargs() == {
        "tensor_parallel_size": 1, "trust_remote_code": False, "dtype": "float32", "download_dir": None,
        "max_model_len": 64}


@pytest.mark.parametrize("cls", [VLLM, Vllm])
def test_negative_temperature_refused(cls):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=-0.5)


@pytest.mark.parametrize("cls", [VLLM, Vllm])
def test_vllm_kwargs_carry_engine_arguments_such_as_kv_cache_dtype(cls):
    """What reaches the in-process provider (``LLM(**kwargs)``): vLLM's kwargs pass through as given."""
    kwargs = cls(model="m", vllm_kwargs={"kv_cache_dtype": "fp8", "num_gpu_blocks_override": 512})._engine_kwargs()
    assert kwargs["kv_cache_dtype"] == "fp8" and kwargs["num_gpu_blocks_override"] == 512
