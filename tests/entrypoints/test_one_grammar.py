"""No silent typos, one grammar (issue 21), offline and served over the same tiny model:
ignored request fields are named (warning + ``x-pagedllm-ignored-fields``), bad roles are refused
offline as on the server, ``LLM.chat`` takes ``generate``'s keyword short form, and prompt +
``max_tokens`` over ``max_model_len`` is the same error offline and served.

The HTTP side is checked through the ``openai`` SDK (its types and exceptions are the oracle)."""
from __future__ import annotations

import logging

import openai
import pytest
from live_server import TINY_MAX_MODEL_LEN, server, tiny_model_dir  # noqa: F401 - fixtures

from pagedllm import LLM, SamplingParams
from pagedllm.tokenizer import CHAT_ROLES

MSG = [{"role": "user", "content": "hi"}]
IGNORED = "x-pagedllm-ignored-fields"


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, dtype="float32", kv_cache_memory="16M", max_model_len=TINY_MAX_MODEL_LEN, seed=0)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0)


# ---- ignored request fields ------------------------------------------------------------------
def test_an_unknown_chat_field_is_named_in_a_header_and_a_warning(client, caplog):
    with caplog.at_level(logging.WARNING):
        raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MSG, max_tokens=2,
                                                               extra_body={"top_kk": 3})
    assert raw.headers[IGNORED] == "top_kk"
    assert raw.parse().choices[0].message.role == "assistant"  # still answered, as vLLM does
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignored" in w and "'top_kk'" in w and "did you mean 'top_k'" in w for w in warnings), warnings


def test_unknown_completion_fields_are_named_and_known_ones_are_not(client):
    raw = client.completions.with_raw_response.create(model="tiny", prompt="hello", max_tokens=2,
                                                      extra_body={"top_k": 3, "max_token": 4, "bogus": 1})
    assert sorted(raw.headers[IGNORED].split(", ")) == ["bogus", "max_token"]
    clean = client.completions.with_raw_response.create(model="tiny", prompt="hello", max_tokens=2,
                                                        extra_body={"top_k": 3})
    assert IGNORED not in clean.headers


def test_a_stream_names_the_ignored_fields_too(client):
    with client.chat.completions.with_streaming_response.create(model="tiny", messages=MSG, max_tokens=2,
                                                                stream=True, extra_body={"top_kk": 3}) as resp:
        assert resp.headers[IGNORED] == "top_kk"
        assert list(resp.iter_lines())


# ---- roles ------------------------------------------------------------------------------------
def test_the_server_refuses_a_misspelt_role_with_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[{"role": "usr", "content": "hi"}], max_tokens=2)
    assert exc.value.status_code == 400 and exc.value.param == "messages.0.role"


def test_llm_chat_refuses_a_misspelt_role(llm):
    with pytest.raises(ValueError) as exc:
        llm.chat([{"role": "usr", "content": "hi"}], max_tokens=2, use_tqdm=False)
    assert "'usr'" in str(exc.value) and "did you mean 'user'" in str(exc.value)


def test_offline_and_served_roles_are_the_same_set():
    from typing import get_args

    from pagedllm.entrypoints.openai.protocol import ChatMessage

    assert set(get_args(ChatMessage.model_fields["role"].annotation)) == set(CHAT_ROLES)


# ---- LLM.chat short form ---------------------------------------------------------------------------
def test_llm_chat_takes_generate_keyword_short_form(llm):
    (short,) = llm.chat(MSG, max_tokens=5, temperature=0, ignore_eos=True, use_tqdm=False)
    (full,) = llm.chat(MSG, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(short.outputs[0].token_ids) == 5
    assert short.outputs[0].token_ids == full.outputs[0].token_ids
    with pytest.raises(TypeError, match="not both"):
        llm.chat(MSG, SamplingParams(), max_tokens=5, use_tqdm=False)
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        llm.chat(MSG, max_token=5, use_tqdm=False)


# ---- max_tokens vs the context window: one rule -----------------------------------------------------
def test_max_tokens_over_the_context_window_is_the_same_error_offline_and_served(llm, client):
    prompt = [1, 2, 3]
    with pytest.raises(ValueError) as offline:
        llm.generate([prompt], max_tokens=10**6, use_tqdm=False)
    with pytest.raises(openai.BadRequestError) as served:
        client.completions.create(model="tiny", prompt=prompt, max_tokens=10**6)
    assert served.value.param == "max_tokens"
    assert str(offline.value) == served.value.body["message"]
    assert f"maximum context length is {TINY_MAX_MODEL_LEN} tokens" in str(offline.value)
    # exactly at the window: accepted on both sides
    fits = TINY_MAX_MODEL_LEN - len(prompt)
    (out,) = llm.generate([prompt], max_tokens=fits, ignore_eos=True, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == fits
    assert client.completions.create(model="tiny", prompt=prompt, max_tokens=fits).choices


def test_generate_route_follows_the_same_rule(llm, server):
    """vLLM's demo ``/generate`` too: the offline error's words, as a 400 naming max_tokens."""
    import httpx

    with pytest.raises(ValueError) as offline:
        llm.generate(["hi"], max_tokens=10**6, use_tqdm=False)
    served = httpx.post(server.url.removesuffix("/v1") + "/generate", json={"prompt": "hi", "max_tokens": 10**6})
    assert served.status_code == 400
    assert served.json()["error"]["param"] == "max_tokens"
    assert served.json()["error"]["message"] == str(offline.value)


def test_max_tokens_over_the_window_in_llm_chat_is_refused(llm):
    with pytest.raises(ValueError, match="max_model_len"):
        llm.chat(MSG, max_tokens=10**6, use_tqdm=False)
