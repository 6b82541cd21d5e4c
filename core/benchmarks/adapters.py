"""Overhead of the LangChain adapter over the engine (`pagedllm bench adapters`), same run.

Issue 5's target: N concurrent ``ChatVLLM.ainvoke`` calls must reach >= 85% of the output
tok/s of the same N requests sent to one ``LLM.generate`` call. Both get the same seeded chat
workload (fixed output length, EOS ignored, greedy), the same engine settings (dtype,
max_num_seqs, token budget, seed) and the same untimed warm-up on two short messages that
are not in the workload, so the ratio measures what the adapter path adds (LangChain
message conversion, chat rendering per call, the engine thread and its asyncio hand-off),
not a difference in work. The peer runs first and is freed before the adapter's engine loads.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from pagedllm.benchmarks.report import load_avg, machine_info, write_json
from pagedllm.benchmarks.throughput import rates
from pagedllm.benchmarks.workload import SyntheticRequest, build_workload, workload_stats
from pagedllm.entrypoints.cli_args import add_engine_args, engine_kwargs

DEFAULT_NUM_REQUESTS = 16
DEFAULT_OUTPUT_LEN = 128
TARGET_RATIO = 0.85  # issue 5: adapter output tok/s >= 85% of LLM.generate's
WARMUP_TOKENS = 4
# Not drawn from the workload, so warm-up leaves no workload prompt in the prefix cache.
WARMUP_MESSAGES = (
    [{"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "Count to three."}],
)


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``pagedllm bench adapters``."""
    parser.add_argument("--num-requests", type=int, default=DEFAULT_NUM_REQUESTS,
                        help="concurrent chat requests (default: %(default)s)")
    parser.add_argument("--output-len", type=int, default=DEFAULT_OUTPUT_LEN,
                        help="output tokens per request, EOS ignored (default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    add_engine_args(parser)
    return parser


def _counts(elapsed: float, requests: list[SyntheticRequest], prompt_tokens: int, output_tokens: int) -> dict:
    return rates({"elapsed_s": elapsed, "num_requests": len(requests),
                  "prompt_tokens": prompt_tokens, "output_tokens": output_tokens})


def bench_llm(args, dtype_name: str, requests: list[SyntheticRequest], output_len: int) -> tuple[dict, list[str]]:
    """The peer: every request in one ``LLM.generate`` call on token ids, after a warm-up."""
    from pagedllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(args, dtype=dtype_name))
    load_s = time.perf_counter() - t0
    tokenizer = llm.get_tokenizer()
    warm = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for m in WARMUP_MESSAGES]
    llm.generate(warm, SamplingParams(temperature=0, max_tokens=WARMUP_TOKENS, ignore_eos=True), use_tqdm=False)

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    result = _counts(elapsed, requests, sum(len(o.prompt_token_ids) for o in outputs),
                     sum(len(o.outputs[0].token_ids) for o in outputs))
    result["load_s"] = load_s
    texts = [o.outputs[0].text for o in outputs]
    del llm, outputs
    _free_memory()
    return result, texts


async def _ainvoke_all(chat, requests: list[SyntheticRequest]):
    """Warm-up then the timed burst, in one event loop (the engine's queues bind to it)."""
    await asyncio.gather(*(chat.ainvoke(m, max_tokens=WARMUP_TOKENS, ignore_eos=True) for m in WARMUP_MESSAGES))
    start = time.perf_counter()
    messages = await asyncio.gather(*(chat.ainvoke(r.messages, ignore_eos=True) for r in requests))
    return time.perf_counter() - start, messages


def bench_adapter(args, dtype_name: str, requests: list[SyntheticRequest], output_len: int) -> tuple[dict, list[str]]:
    """The adapter: one concurrent ``ChatVLLM.ainvoke`` per request on the same engine settings.

    ``ChatVLLM`` has no ``ignore_eos`` field, so it travels as a call keyword (each call's
    keywords override the sampling fields); the other engine settings go in ``vllm_kwargs``.
    """
    from pagedllm.integrations.langchain import ChatVLLM

    engine = engine_kwargs(args, dtype=dtype_name)
    model, dtype = engine.pop("model"), engine.pop("dtype")
    chat = ChatVLLM(model=model, dtype=dtype, temperature=0, max_tokens=output_len, vllm_kwargs=engine)
    t0 = time.perf_counter()
    provider = chat.provider  # loads the engine: not part of the timed burst
    load_s = time.perf_counter() - t0
    try:
        elapsed, messages = asyncio.run(_ainvoke_all(chat, requests))
    finally:
        shutdown = getattr(getattr(provider, "engine", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
    result = _counts(elapsed, requests, sum(m.usage_metadata["input_tokens"] for m in messages),
                     sum(m.usage_metadata["output_tokens"] for m in messages))
    result["load_s"] = load_s
    return result, [m.content for m in messages]


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_benchmark(args: argparse.Namespace) -> dict:
    """Resolve model and dtype once, build the workload once, run the peer then the adapter."""
    import torch
    from transformers import AutoTokenizer

    from pagedllm.config import resolve_dtype
    from pagedllm.loader import resolve_model

    for name in ("num_requests", "output_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model).path)
    requests = build_workload(tokenizer, args.num_requests, args.output_len, args.output_len, seed=args.seed)
    stats = workload_stats(requests)
    load_before = load_avg()
    print(f"workload: {stats['num_requests']} chat requests, {stats['prompt_tokens']} prompt + "
          f"{stats['output_tokens']} output tokens; {dtype_name} on {device}", file=sys.stderr)

    results, texts = {}, {}
    for name, bench in (("llm_generate", bench_llm), ("chatvllm_ainvoke", bench_adapter)):
        # Each path in a fresh process: torch kernels started from a non-main thread (the
        # adapter's engine thread) run slower once the main thread has run an OpenMP team.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name], texts[name] = pool.submit(bench, args, dtype_name, requests, args.output_len).result()
        r = results[name]
        print(f"{name}: {r['output_tokens']} output tokens in {r['elapsed_s']:.2f} s "
              f"({r['output_tokens_per_s']:.1f} tok/s)", file=sys.stderr, flush=True)
    peer, adapter = results["llm_generate"], results["chatvllm_ainvoke"]
    ratio = adapter["output_tokens_per_s"] / peer["output_tokens_per_s"]
    return {
        "benchmark": "adapters",
        "model": args.model,
        "dtype": dtype_name,
        "device": str(device),
        "seed": args.seed,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "workload": stats,
        "results": results,
        "ratio_adapter_over_llm_generate": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        # Same work on both sides, or the ratio means nothing.
        "same_output_tokens": adapter["output_tokens"] == peer["output_tokens"] == stats["output_tokens"],
        "same_prompt_tokens": adapter["prompt_tokens"] == peer["prompt_tokens"],
        # Informational: greedy texts can differ where batch composition changes float rounding.
        "identical_texts": sum(a == b for a, b in zip(texts["llm_generate"], texts["chatvllm_ainvoke"])),
        "machine": machine_info(device, load_before),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_table(report: dict) -> str:
    """A short markdown table: output tok/s of both paths, their ratio, and the token check."""
    labels = {"llm_generate": "`LLM.generate` (one call)",
              "chatvllm_ainvoke": f"`ChatVLLM.ainvoke` x{report['workload']['num_requests']} (asyncio.gather)"}
    lines = ["| path | output tokens | elapsed (s) | output tok/s | requests/s |", "|---|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        lines.append(f"| {labels[name]} | {r['output_tokens']} | {r['elapsed_s']:.2f} | "
                     f"{r['output_tokens_per_s']:.1f} | {r['requests_per_s']:.2f} |")
    w, ratio = report["workload"], report["ratio_adapter_over_llm_generate"]
    lines += [
        "",
        f"{w['num_requests']} requests, {w['prompt_tokens']} prompt + {w['output_tokens']} output tokens, "
        f"{report['model']}, {report['dtype']} on {report['device']}",
        f"ratio adapter/LLM.generate (output tok/s): {ratio:.1%} "
        f"(target >= {report['target_ratio']:.0%}: {'met' if report['meets_target'] else 'NOT met'})",
        f"same output tokens: {'yes' if report['same_output_tokens'] else 'NO'}; "
        f"same prompt tokens: {'yes' if report['same_prompt_tokens'] else 'NO'}; "
        f"identical texts: {report['identical_texts']}/{w['num_requests']}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry of ``pagedllm bench adapters``: run, print the table, optionally write JSON."""
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    return 0 if report["same_output_tokens"] else 1
