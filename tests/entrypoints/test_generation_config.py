"""Sampling defaults from the model's generation_config.json (vLLM's ``generation_config="auto"``).

With no SamplingParams (``LLM.generate``/``LLM.chat``) or an unset request field (the OpenAI server,
``/generate``), temperature, top_p, top_k, min_p, repetition_penalty and max_new_tokens (as
max_tokens) come from the model folder's generation_config.json; ``"vllm"`` keeps SamplingParams'
own defaults; what the caller sets always wins.
"""
from __future__ import annotations

import json
import os

import pytest
from live_server import start_server
from model_fixtures import make_tiny_model

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import GENERATION_CONFIG_KEYS, generation_config_defaults

CUSTOM = {"temperature": 0.0, "top_p": 0.9, "top_k": 7, "min_p": 0.05, "repetition_penalty": 1.1,
          "max_new_tokens": 5, "do_sample": True, "bos_token_id": 1}
WANTED = {"temperature": 0.0, "top_p": 0.9, "top_k": 7, "min_p": 0.05, "repetition_penalty": 1.1, "max_tokens": 5}


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> str:
    path = make_tiny_model(tmp_path_factory.mktemp("tiny-genconfig"))
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump(CUSTOM, f)
    return path


@pytest.fixture(scope="module")
def custom_llm(custom_model):
    return LLM(custom_model, dtype="float32", kv_cache_memory=8 << 20, max_model_len=256, device="cpu")


def test_defaults_are_the_files_keys_only(custom_model, tmp_path):
    assert generation_config_defaults("auto", custom_model) == WANTED
    assert generation_config_defaults("vllm", custom_model) == {}
    assert generation_config_defaults("auto", str(tmp_path)) == {}        # no file: no defaults
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_k": None}))
    assert generation_config_defaults(str(tmp_path), custom_model) == {"temperature": 0.3}   # a folder
    with pytest.raises(ValueError, match="no generation_config.json"):
        generation_config_defaults(str(tmp_path / "missing"), custom_model)


def test_bundled_models_generation_config_is_the_oracle(bundled_model_path):
    """The real file of the bundled model, read here: its sampling keys, and nothing else, are defaults."""
    with open(os.path.join(bundled_model_path, "generation_config.json")) as f:
        file = json.load(f)
    expected = {name: file[key] for key, name in GENERATION_CONFIG_KEYS.items() if file.get(key) is not None}
    assert generation_config_defaults("auto", bundled_model_path) == expected
    params = SamplingParams(**expected)
    for key, name in GENERATION_CONFIG_KEYS.items():   # keys the file lacks keep SamplingParams' defaults
        assert getattr(params, name) == (file[key] if key in file else getattr(SamplingParams(), name))


def test_llm_without_sampling_params_uses_the_models_defaults(custom_llm):
    default = custom_llm.get_default_sampling_params()
    assert {k: getattr(default, k) for k in WANTED} == WANTED
    out = custom_llm.generate(["Hello, my name is"], use_tqdm=False)[0].outputs[0]
    greedy = custom_llm.generate(["Hello, my name is"], SamplingParams(**WANTED), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == greedy.token_ids and len(out.token_ids) <= 5
    chat = custom_llm.chat([{"role": "user", "content": "Hi"}], use_tqdm=False)[0].outputs[0]
    assert len(chat.token_ids) <= 5
    # the short form: its keywords win, the rest come from the file
    short = custom_llm.generate("Hello", max_tokens=3, ignore_eos=True, use_tqdm=False)[0].outputs[0]
    assert len(short.token_ids) == 3
    explicit = SamplingParams(max_tokens=2, ignore_eos=True)   # given SamplingParams are used as they are
    assert len(custom_llm.generate("Hello", explicit, use_tqdm=False)[0].outputs[0].token_ids) == 2


def test_generation_config_vllm_keeps_samplingparams_defaults(custom_model):
    llm = LLM(custom_model, dtype="float32", kv_cache_memory=8 << 20, max_model_len=256, device="cpu",
              generation_config="vllm")
    assert llm.get_default_sampling_params() == SamplingParams()


def test_server_fills_unset_request_fields_from_the_models_defaults(custom_model):
    import httpx

    live = start_server(custom_model)
    try:
        messages = [{"role": "user", "content": "Hello"}]
        post = lambda path, body: httpx.post(live.url + path, json=body, timeout=60).json()  # noqa: E731
        unset = post("/chat/completions", {"model": "tiny", "messages": messages})
        assert unset["usage"]["completion_tokens"] <= 5
        again = post("/chat/completions", {"model": "tiny", "messages": messages})   # temperature 0: greedy
        assert again["choices"][0]["message"]["content"] == unset["choices"][0]["message"]["content"]
        forced = post("/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 8,
                                            "ignore_eos": True, "temperature": 1.0, "seed": 1})
        assert forced["usage"]["completion_tokens"] == 8      # the request's own values win
        legacy = post("/completions", {"model": "tiny", "prompt": "Hello"})
        assert legacy["usage"]["completion_tokens"] <= 5       # not OpenAI's 16: the model's max_new_tokens
        params = live.engine.engine.default_sampling_params
        assert params == WANTED
    finally:
        live.stop()

