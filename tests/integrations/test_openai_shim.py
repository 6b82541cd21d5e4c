"""The in-process OpenAI client and a real loopback server run the same tests, with identical greedy results."""
from __future__ import annotations

import asyncio

import openai
import pytest

from live_server import TINY_MAX_MODEL_LEN, start_server, tiny_model_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # each backend builds an engine
RESULTS: dict[str, dict[str, object]] = {}
MESSAGES = [{"role": "user", "content": "Tell me about paged attention."}]


@pytest.fixture(scope="module", params=["in-process", "server"])
def backend(request, tiny_model_dir):
    """(name, sync client, async client factory) for one backend."""
    if request.param == "in-process":
        from pagedllm.integrations.openai import AsyncOpenAI, OpenAI

        kwargs = dict(dtype="float32", kv_cache_memory=16 << 20, max_model_len=TINY_MAX_MODEL_LEN, seed=0,
                      served_model_name="tiny")
        yield request.param, OpenAI(tiny_model_dir, **kwargs), lambda: AsyncOpenAI(tiny_model_dir, **kwargs)
        return
    live = start_server(tiny_model_dir)
    yield (request.param, openai.OpenAI(base_url=live.url, api_key="x"),
           lambda: openai.AsyncOpenAI(base_url=live.url, api_key="x"))
    live.stop()


def same_everywhere(name: str, backend_name: str, value) -> None:
    """Record ``value``; the second backend to run asserts it saw the same."""
    seen = RESULTS.setdefault(name, {})
    seen[backend_name] = value
    if len(seen) == 2:
        a, b = seen.values()
        assert a == b, f"{name}: in-process and server differ: {seen}"


def test_chat_create(backend):
    name, client, _ = backend
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    same_everywhere("chat", name, (r.choices[0].message.content, r.usage.model_dump()))


def test_chat_stream(backend):
    name, client, _ = backend
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and chunks[-1].usage.completion_tokens == 12
    same_everywhere("chat-stream", name, text)
    assert text == RESULTS["chat"][name][0]  # streamed = whole


def test_stream_closed_early_aborts(backend):
    name, client, _ = backend
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, temperature=0,
                                            stream=True)
    next(iter(stream))
    stream.close()
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4  # the engine is fine after the abort


def test_completions_n(backend):
    name, client, _ = backend
    r = client.completions.create(model="tiny", prompt=["Hello, my name is", "The capital of France is"],
                                  max_tokens=8, temperature=0)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert len(texts) == 2 and all(texts)
    same_everywhere("completions", name, (texts, r.usage.model_dump()))


def test_models_list(backend):
    name, client, _ = backend
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny"]
    same_everywhere("models", name, ids)


def test_errors(backend):
    name, client, _ = backend
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10 ** 6)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="hi", temperature=5)
    same_everywhere("errors", name, (bad.value.status_code, bad.value.body["param"], missing.value.status_code))


def test_with_raw_response(backend):
    name, client, _ = backend
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES, max_tokens=4,
                                                           temperature=0)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
    same_everywhere("raw", name, raw.parse().choices[0].message.content)


def test_async_client(backend):
    name, _, make_async = backend

    async def main():
        client = make_async()
        whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12,
                                                      temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return (await whole).choices[0].message.content, "".join(parts)

    whole, streamed = asyncio.run(main())
    assert whole == streamed == RESULTS["chat"][name][0]
