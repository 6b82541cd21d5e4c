"""``pagedllm bench serve``: load an OpenAI-compatible server (pagedllm, vLLM, ...) with streaming clients.

Sends the seeded chat workload (the same token ids as ``bench throughput``) to
``/v1/completions`` as prompt token ids, ``max_tokens`` = the workload's output length and
``ignore_eos`` (vLLM's extra field), so served and offline figures are comparable. Reports
output tok/s, TTFT and TPOT p50/p99, and errors.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time

from pagedllm.benchmarks.report import rss_mib, write_json
from pagedllm.benchmarks.workload import (DEFAULT_MAX_OUTPUT_LEN, DEFAULT_MIN_OUTPUT_LEN, DEFAULT_NUM_REQUESTS,
                                          build_workload, workload_stats)


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name to send (default: the server's first model)")
    parser.add_argument("--tokenizer", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                        help="tokenizer that builds the workload's token ids (default: %(default)s, bundled)")
    parser.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY, else EMPTY)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_REQUESTS, help="requests (default: %(default)s)")
    parser.add_argument("--min-output-len", type=int, default=DEFAULT_MIN_OUTPUT_LEN)
    parser.add_argument("--max-output-len", type=int, default=DEFAULT_MAX_OUTPUT_LEN)
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="soak: keep --concurrency requests in flight for this long, cycling the workload, "
                             "instead of sending it once")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="sample this process's RSS every 5 s (a local server) and report its growth after "
                             "warm-up (the first 10%% of the run)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    return parser


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _one(client, model: str, req, results: list) -> None:
    start = time.perf_counter()
    first = None
    tokens = 0
    try:
        stream = await client.completions.create(
            model=model, prompt=req.prompt_token_ids, max_tokens=req.output_len, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        tokens = tokens or chunks
        end = time.perf_counter()
        ttft = (first or end) - start
        results.append({"ok": True, "tokens": tokens, "ttft": ttft, "latency": end - start,
                        "tpot": (end - (first or end)) / (tokens - 1) if tokens > 1 else None})
    except Exception as exc:  # counted, reported, never hidden
        results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def run(args: argparse.Namespace, requests) -> dict:
    from openai import AsyncOpenAI

    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # as the OpenAI clients read it
    async with AsyncOpenAI(base_url=args.base_url, api_key=api_key, max_retries=0, timeout=600) as client:
        return await _run(args, requests, client)


async def _run(args: argparse.Namespace, requests, client) -> dict:
    model = args.model or (await client.models.list()).data[0].id
    results: list = []
    duration = getattr(args, "duration", None)
    start = time.perf_counter()
    order = itertools.cycle(requests) if duration else iter(requests)

    async def worker():  # --concurrency of these keep that many requests in flight
        for req in order:
            if duration and time.perf_counter() - start >= duration:
                return
            await _one(client, model, req, results)

    rss: list = []
    sampler = asyncio.create_task(_sample_rss(args.server_pid, rss)) if getattr(args, "server_pid", None) else None
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - start
    if sampler is not None:
        sampler.cancel()
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok]
    tpots = [r["tpot"] for r in ok if r["tpot"] is not None]
    errors = [r["error"] for r in results if not r["ok"]]
    return {
        "base_url": args.base_url, "model": model, "concurrency": args.concurrency,
        "workload": workload_stats(requests), "elapsed_s": elapsed, "completed": len(ok), "errors": len(errors),
        "first_errors": errors[:5], "output_tokens": tokens, "output_tok_per_s": tokens / elapsed,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "tpot_p50_s": percentile(tpots, 50), "tpot_p99_s": percentile(tpots, 99),
        "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None,
        **_rss_growth(rss),
    }


async def _sample_rss(pid: int, samples: list, every_s: float = 5.0) -> None:
    """(seconds since start, RSS MiB) of ``pid`` every ``every_s`` from /proc (Linux)."""
    start = time.perf_counter()
    while True:
        samples.append((round(time.perf_counter() - start, 1), round(rss_mib(pid), 1)))
        await asyncio.sleep(every_s)


def _rss_growth(samples: list) -> dict:
    """RSS after warm-up (the first sample past 10% of the run) against the last one."""
    if len(samples) < 2:
        return {}
    warm = next(s for s in samples if s[0] >= samples[-1][0] * 0.1)
    return {"rss_samples": samples, "rss_after_warmup_mib": warm[1], "rss_end_mib": samples[-1][1],
            "rss_growth_pct": 100 * (samples[-1][1] - warm[1]) / warm[1]}


def format_report(r: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1000:.0f} ms"

    return (f"{r['completed']} requests ({r['errors']} errors) at concurrency {r['concurrency']} in "
            f"{r['elapsed_s']:.1f} s against {r['base_url']} ({r['model']})\n"
            f"output: {r['output_tokens']} tokens, {r['output_tok_per_s']:.1f} tok/s\n"
            f"TTFT p50 {ms(r['ttft_p50_s'])}, p99 {ms(r['ttft_p99_s'])}; "
            f"TPOT p50 {ms(r['tpot_p50_s'])}, p99 {ms(r['tpot_p99_s'])}"
            + (f"\nserver RSS {r['rss_after_warmup_mib']:.0f} MiB after warm-up -> {r['rss_end_mib']:.0f} MiB at "
               f"the end ({r['rss_growth_pct']:+.1f}%)" if "rss_growth_pct" in r else ""))


def main(args: argparse.Namespace) -> int:
    from pagedllm.loader import resolve_model
    from pagedllm.tokenizer import load_tokenizer

    if args.concurrency < 1:
        raise SystemExit("--concurrency must be >= 1")
    tokenizer = load_tokenizer(resolve_model(args.tokenizer).path)
    requests = build_workload(tokenizer, args.num_prompts, args.min_output_len, args.max_output_len, args.seed)
    report = asyncio.run(run(args, requests))
    print(format_report(report))
    for err in report["first_errors"]:
        print(f"  error: {err}")
    write_json(report, args.output_json)
    return 1 if report["errors"] else 0
