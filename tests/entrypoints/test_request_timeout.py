"""``--request-timeout``: a request generating longer is stopped (408, or an error event then [DONE] in a
stream), its KV blocks freed; a short request on the same server is untouched."""
from __future__ import annotations

import time

import openai
import pytest
from live_server import tiny_model_dir  # noqa: F401 - fixture

LONG = {"model": "tiny", "prompt": "tell me everything", "max_tokens": 480, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    engine = AsyncEngine.from_config(EngineConfig.from_kwargs(model=tiny_model_dir, dtype="float32",
                                                              kv_cache_memory=16 << 20, max_model_len=512))
    yield build_app(engine, ["tiny"], request_timeout=0.3), engine
    engine.shutdown()


def _blocks_freed(engine) -> bool:
    deadline = time.time() + 10
    while engine.num_used_blocks() and time.time() < deadline:
        time.sleep(0.05)
    return engine.num_used_blocks() == 0


def test_a_long_request_is_stopped_with_408(served):
    from pagedllm.integrations.openai import OpenAI

    app, engine = served
    client = OpenAI("tiny", app=app).with_options(max_retries=0)  # the SDK retries 408 by default
    started = time.time()
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(**LONG)
    assert exc.value.status_code == 408 and exc.value.body["code"] == "request_timeout"
    assert "--request-timeout" in exc.value.body["message"] and time.time() - started < 5
    assert _blocks_freed(engine)
    short = client.completions.create(model="tiny", prompt="hi", max_tokens=3)
    assert short.usage.completion_tokens == 3


def test_a_long_stream_ends_with_an_error_event(served):
    from pagedllm.integrations.openai import OpenAI

    app, engine = served
    received = []
    with pytest.raises(openai.APIError) as exc:  # the SDK raises on the stream's error event
        for chunk in OpenAI("tiny", app=app).completions.create(stream=True, **LONG):
            received.append(chunk.choices[0].text)
    assert "--request-timeout" in str(exc.value) and received  # some tokens came before the stop
    assert _blocks_freed(engine)
