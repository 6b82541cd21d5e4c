"""Continuous batching across HTTP requests, and client disconnects that free their KV blocks."""
from __future__ import annotations

import asyncio
import time

import openai
import requests
from live_server import server, tiny_model_dir  # noqa: F401 - fixtures
from prometheus_client.parser import text_string_to_metric_families


def scrape(base: str) -> dict[str, float]:
    """``/metrics`` as {name{labels}: value}, plus bare names for single-series metrics."""
    values = {}
    for family in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text):
        for s in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model_name",))
            values[f"{s.name}{{{extra}}}" if extra else s.name] = s.value
    return values


def test_64_concurrent_streams_batch_together(server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Question number {i}?"}], max_tokens=16,
            temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        chunks = [c async for c in stream]
        return chunks[-1].usage.completion_tokens, [c.choices[0].finish_reason for c in chunks if c.choices]

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        results = await asyncio.gather(*(one(client, i) for i in range(64)))
        await client.close()
        return results

    results = asyncio.run(main())
    assert [tokens for tokens, _ in results] == [16] * 64
    assert all(finishes[-1] == "length" for _, finishes in results)
    m = scrape(server.base)
    assert m["pagedllm:max_batch_size"] > 1
    # the batch-size histogram saw steps with more than one sequence
    assert m["pagedllm:batch_size_count"] > m.get("pagedllm:batch_size_bucket{le=1.0}", 0)
    assert m["pagedllm:time_to_first_token_seconds_count"] >= 64
    assert m["pagedllm:kv_cache_usage_perc"] == 0.0


def test_disconnect_midstream_aborts_and_frees_blocks(server):
    before = scrape(server.base).get("pagedllm:request_success_total{finished_reason=abort}", 0)
    body = {"model": "tiny", "prompt": "Write a very long story.", "max_tokens": 400, "temperature": 0,
            "stream": True, "ignore_eos": True}
    responses = [requests.post(server.url + "/completions", json=body, stream=True, timeout=60) for _ in range(20)]
    for r in responses:  # read a little of each stream, then hang up
        lines = r.iter_lines()
        got = 0
        while got < 3:
            got += bool(next(lines))
    assert scrape(server.base)["pagedllm:kv_cache_usage_perc"] > 0
    for r in responses:
        r.close()
    deadline = time.time() + 30
    while True:
        m = scrape(server.base)
        aborted = m.get("pagedllm:request_success_total{finished_reason=abort}", 0) - before
        if (m["pagedllm:kv_cache_usage_perc"] == 0.0 and aborted == 20) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert aborted == 20, "every disconnected stream is aborted (not run to max_tokens)"
    assert m["pagedllm:kv_cache_usage_perc"] == 0.0
    assert m["pagedllm:num_requests_running"] == 0 and m["pagedllm:num_requests_waiting"] == 0
    ok = requests.post(server.url + "/completions", json={"model": "tiny", "prompt": "Still there?", "max_tokens": 4},
                       timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def test_disconnect_before_a_non_streamed_answer_aborts(server):
    before = scrape(server.base).get("pagedllm:request_success_total{finished_reason=abort}", 0)
    body = {"model": "tiny", "prompt": "Write a very long story.", "max_tokens": 450, "temperature": 0,
            "ignore_eos": True}
    for _ in range(3):
        try:
            requests.post(server.url + "/completions", json=body, timeout=0.3)
        except requests.exceptions.Timeout:
            pass
    deadline = time.time() + 30
    while time.time() < deadline:
        m = scrape(server.base)
        if m.get("pagedllm:request_success_total{finished_reason=abort}", 0) - before == 3:
            break
        time.sleep(0.1)
    assert m.get("pagedllm:request_success_total{finished_reason=abort}", 0) - before == 3
    assert m["pagedllm:kv_cache_usage_perc"] == 0.0
