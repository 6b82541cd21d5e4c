"""``--max-waiting-requests``: past the bound the server answers 503 + Retry-After before the engine sees
the request; every accepted request completes and nothing leaks (issue #18 point 4).

The app runs in-process on httpx's ASGI transport over a tiny random Llama, ``max_num_seqs=1`` so
that requests queue up behind the one running.
"""
from __future__ import annotations

import asyncio
import os

import httpx
import openai
import pytest
from live_server import TINY_MAX_MODEL_LEN, tiny_model_dir  # noqa: F401 - fixture
from pagedllm.benchmarks.report import rss_mib

MAX_TOKENS = 24


def make_app(model_dir: str, **engine_kwargs):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    config = EngineConfig.from_kwargs(model=model_dir, dtype="float32", kv_cache_memory=16 << 20,
                                      max_model_len=TINY_MAX_MODEL_LEN, seed=0, max_num_seqs=1, **engine_kwargs)
    engine = AsyncEngine.from_config(config)
    return build_app(engine, ["tiny"]), engine


@pytest.fixture(scope="module")
def bounded(tiny_model_dir):  # noqa: F811 - fixture
    app, engine = make_app(tiny_model_dir, max_waiting_requests=2)
    yield app, engine
    engine.shutdown()


@pytest.fixture(scope="module")
def unbounded(tiny_model_dir):  # noqa: F811 - fixture
    app, engine = make_app(tiny_model_dir)
    yield app, engine
    engine.shutdown()


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120)


async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
    """Request ``i``: completions, chat completions or /generate in turn (all non-streaming)."""
    common = {"max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0}
    kind = i % 3
    if kind == 0:
        return await client.post("/v1/completions", json={"model": "tiny", "prompt": f"Count {i}:", **common})
    if kind == 1:
        return await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": f"Question {i}?"}], **common})
    return await client.post("/generate", json={"prompt": f"Story {i}:", **common})


def completed_tokens(i: int, resp: httpx.Response) -> int:
    """The accepted answer's completion tokens from its usage; /generate has none: its text grew."""
    body = resp.json()
    if i % 3 == 2:
        text = body["text"][0]
        assert text.startswith(f"Story {i}:") and len(text) > len(f"Story {i}:")
        return MAX_TOKENS
    assert body["choices"][0]["finish_reason"] == "length"
    return body["usage"]["completion_tokens"]


def assert_refused(resp: httpx.Response, bound: int) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"].isdigit() and int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert error["type"] == "ServiceUnavailableError"
    assert "max_waiting_requests" in error["message"] and f"is {bound}" in error["message"]


def assert_idle(engine) -> None:
    """Nothing waiting or running, every KV block free (after the engine thread caught up)."""
    sched, bm = engine.engine.scheduler, engine.engine.block_manager
    for _ in range(200):
        if not sched.waiting and not sched.running and engine.num_waiting_requests == 0 \
                and bm.num_free_blocks == bm.num_blocks:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert not sched.waiting and not sched.running
    assert engine.num_waiting_requests == 0
    assert bm.num_free_blocks == bm.num_blocks


def fire(app, n: int) -> list[httpx.Response]:
    async def main():
        async with asgi_client(app) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    return asyncio.run(main())


def test_4x_bound_excess_refused_accepted_complete(bounded):
    app, engine = bounded
    peak = [0]
    engine.add_step_listener(lambda record: peak.__setitem__(0, max(peak[0], engine.num_waiting_requests)))
    responses = fire(app, 8)  # 4 x max_waiting_requests
    accepted = [(i, r) for i, r in enumerate(responses) if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "8 concurrent requests over max_num_seqs=1, max_waiting_requests=2: some must be refused"
    assert len(accepted) >= 2  # the first two always fit (more if the engine starts one meanwhile)
    for r in refused:
        assert_refused(r, 2)
    for i, r in accepted:
        assert completed_tokens(i, r) == MAX_TOKENS
    assert peak[0] <= 2  # never more waiting than the bound
    assert_idle(engine)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc (Linux)")
def test_repeated_overload_does_not_grow_memory(bounded):
    """Ten more bursts of 4x the bound after a warm-up one (80 requests, most refused) leave nothing behind:
    every block free, and the process's RSS within 32 MiB of where it was (the bound this server states for
    overload; the KV cache is allocated once at start, so only leaked request state could grow it)."""
    app, engine = bounded
    fire(app, 8)
    before = rss_mib()
    refused = 0
    for _ in range(10):
        refused += sum(r.status_code == 503 for r in fire(app, 8))
    assert refused >= 10
    assert rss_mib() - before < 32, (before, rss_mib())
    assert_idle(engine)


def test_streaming_refused_before_the_stream_starts_sdk_sees_503(bounded):
    """With the queue full, a streaming request (SDK) gets the 503 as APIStatusError, no stream."""
    app, engine = bounded

    async def main():
        async with asgi_client(app) as http:
            sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", max_retries=0, http_client=http)
            async def until(cond):
                for _ in range(1000):
                    if cond():
                        return
                    await asyncio.sleep(0.01)

            def post(i):
                return asyncio.ensure_future(http.post("/v1/completions", json={
                    "model": "tiny", "prompt": f"Busy {i}:", "max_tokens": 200, "ignore_eos": True}))

            # One running, then two waiting: enough work that the queue stays full while we knock.
            busy = [post(0)]
            await until(lambda: engine.engine.scheduler.running and engine.num_waiting_requests == 0)
            busy += [post(1), post(2)]
            await until(lambda: engine.num_waiting_requests >= 2)
            assert engine.num_waiting_requests >= 2
            with pytest.raises(openai.APIStatusError) as info:
                stream = await sdk.completions.create(model="tiny", prompt="Late", max_tokens=4, stream=True)
                [c async for c in stream]
            done = await asyncio.gather(*busy)
            return info.value, done

    err, done = asyncio.run(main())
    assert err.status_code == 503
    assert err.response.headers["retry-after"] == "1"
    assert err.body["type"] == "ServiceUnavailableError" and "max_waiting_requests" in err.body["message"]
    assert [r.status_code for r in done] == [200] * 3, [r.text for r in done]
    assert [r.json()["usage"]["completion_tokens"] for r in done] == [200] * 3
    assert_idle(engine)


def test_without_the_bound_all_8_complete(unbounded):
    app, engine = unbounded
    responses = fire(app, 8)
    assert [r.status_code for r in responses] == [200] * 8
    for i, r in enumerate(responses):
        assert completed_tokens(i, r) == MAX_TOKENS
    assert_idle(engine)


def test_bound_must_be_positive(tiny_model_dir):  # noqa: F811 - fixture
    from pagedllm.config import EngineConfig

    with pytest.raises(ValueError, match="max_waiting_requests"):
        EngineConfig.from_kwargs(model=tiny_model_dir, max_waiting_requests=0)
