"""Bad input never reaches the engine as a 500 or FastAPI's raw 422: OpenAI-shaped 4xx, then the server still serves."""
from __future__ import annotations

import json

import pytest
import requests
from live_server import TINY_MAX_MODEL_LEN, server, tiny_model_dir  # noqa: F401 - fixtures

MSG = [{"role": "user", "content": "hi"}]
C, CHAT = "/v1/completions", "/v1/chat/completions"


def cmpl(**kw):
    return {"model": "tiny", "prompt": "hello", "max_tokens": 2, **kw}


def chat(**kw):
    return {"model": "tiny", "messages": MSG, "max_tokens": 2, **kw}


CASES = [  # (id, path, body (dict -> JSON, bytes -> raw), status, param the error names or None)
    ("max_tokens-string", C, cmpl(max_tokens="ten"), 400, "max_tokens"),
    ("max_tokens-negative", C, cmpl(max_tokens=-5), 400, "max_tokens"),
    ("max_tokens-zero", CHAT, chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens-huge", C, cmpl(max_tokens=10**9), 400, "max_tokens"),
    ("max_tokens-float", C, cmpl(max_tokens=3.5), 400, "max_tokens"),
    ("max_tokens-bool", C, cmpl(max_tokens=True), 400, "max_tokens"),
    ("temperature-5", CHAT, chat(temperature=5), 400, "temperature"),
    ("temperature-string", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("top_p-0", C, cmpl(top_p=0), 400, "top_p"),
    ("n-0", CHAT, chat(n=0), 400, "n"),
    ("n-string", C, cmpl(n="two"), 400, "n"),
    ("messages-empty", CHAT, chat(messages=[]), 400, "messages"),
    ("messages-missing", CHAT, {"model": "tiny"}, 400, "messages"),
    ("messages-not-list", CHAT, chat(messages="hi"), 400, "messages"),
    ("role-unknown", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    ("content-image", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     400, "messages[0].content"),
    ("prompt-missing", C, {"model": "tiny"}, 400, "prompt"),
    ("prompt-number", C, cmpl(prompt=42), 400, "prompt"),
    ("prompt-empty-list", C, cmpl(prompt=[]), 400, "prompt"),
    ("prompt-bad-token-id", C, cmpl(prompt=[1, 10**8]), 400, "prompt"),
    ("prompt-over-context", C, cmpl(prompt="hello " * (TINY_MAX_MODEL_LEN + 10)), 400, "prompt"),
    ("chat-over-context", CHAT, chat(messages=[{"role": "user", "content": "hi " * TINY_MAX_MODEL_LEN}]), 400,
     "messages"),
    ("response_format-bad-type", CHAT, chat(response_format={"type": "xml"}), 400, "response_format.type"),
    ("response_format-schema-missing", CHAT, chat(response_format={"type": "json_schema"}), 400, "response_format"),
    ("stop-number", C, cmpl(stop=5), 400, "stop"),
    ("stream-string", C, cmpl(stream="yes"), 400, "stream"),
    ("stream_options-without-stream", C, cmpl(stream_options={"include_usage": True}), 400, "stream_options"),
    ("logit_bias-bad-key", C, cmpl(logit_bias={"abc": 1.0}), 400, "logit_bias"),
    ("top_logprobs-without-logprobs", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("prompt_logprobs-not-yet", C, cmpl(prompt_logprobs=1), 400, "prompt_logprobs"),
    ("body-array", C, [1, 2, 3], 400, None),
    ("invalid-json", C, b"{\"model\": \"tiny\", ", 400, None),
    ("invalid-utf8", C, b"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}", 400, None),
    ("empty-body", CHAT, b"", 400, None),
    ("unknown-model", C, cmpl(model="gpt-5"), 404, "model"),
    ("ten-megabytes", C, b"{\"prompt\": \"" + b"a" * (10 << 20) + b"\"}", 413, None),
    ("generate-no-prompt", "/generate", {"max_tokens": 3}, 400, "prompt"),
    ("generate-unknown-param", "/generate", {"prompt": "hi", "bogus": 1}, 400, None),
    ("tokenize-neither", "/tokenize", {}, 400, "prompt"),
    ("detokenize-bad-id", "/detokenize", {"tokens": [10**9]}, 400, "tokens"),
]


@pytest.mark.parametrize("path,body,status,param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_openai_shaped(server, path, body, status, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(server.base + path, data=data, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_wrong_method_and_route_are_openai_shaped(server):
    r = requests.get(server.base + C, timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_server_still_serves_after_bad_input(server):
    r = requests.post(server.base + CHAT, json=chat(max_tokens=3), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert requests.get(server.base + "/health", timeout=10).status_code == 200
    assert server.engine.engine.block_manager.usage == 0.0
