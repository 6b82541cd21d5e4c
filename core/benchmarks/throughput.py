"""Offline throughput of pagedllm against transformers (`pagedllm bench throughput`), same run.

Both backends get the same seeded chat workload (identical prompt token ids, output lengths
16-256 with EOS ignored) in the same process and the same dtype, each after an untimed
warm-up, so the ratio printed at the end compares engines and not machines or settings.
``pagedllm`` sends every request to one ``LLM.generate`` call (continuous batching);
``hf`` runs static batches through ``model.generate`` (see ``hf_backend``). With
``--tensor-parallel-size N`` (N > 1) pagedllm also runs at one rank in the same run
(``pagedllm_tp1``, all cores' threads in one process) and the report gives the TP=N/TP=1 ratio and
the bytes each rank all-reduced per step: on a CPU this prices the machinery (processes, messages,
collectives), since the ranks share the cores one rank could use. With
``--distributed-executor-backend ray`` the mp executor runs at the same N too (``pagedllm_mp``), the
peer the Ray executor is measured against (ray/mp ratio).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time

from pagedllm import distributed
from pagedllm.benchmarks.hf_backend import DEFAULT_HF_BATCH_SIZE
from pagedllm.benchmarks.report import load_avg, machine_info, write_json
from pagedllm.benchmarks.workload import (
    DEFAULT_MAX_OUTPUT_LEN,
    DEFAULT_MIN_OUTPUT_LEN,
    DEFAULT_NUM_REQUESTS,
    SyntheticRequest,
    build_workload,
    workload_stats,
)
from pagedllm.entrypoints.cli_args import add_engine_args, engine_kwargs

BACKENDS = ("pagedllm", "hf", "both")
SAMPLING = ("greedy", "penalties", "compare")
# What a chat client typically sends besides greedy: the workload of issue 3's target.
PENALTIES_PROFILE = dict(temperature=0.8, top_p=0.95, top_k=50, presence_penalty=0.5, frequency_penalty=0.5,
                         repetition_penalty=1.1, logprobs=5)
WARMUP_TOKENS = 4


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``pagedllm bench throughput``."""
    parser.add_argument("--backend", choices=BACKENDS, default="both",
                        help="pagedllm, hf (transformers static batches) or both, with their ratio (default: both)")
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_REQUESTS,
                        help="number of requests in the workload (default: %(default)s)")
    parser.add_argument("--min-output-len", type=int, default=DEFAULT_MIN_OUTPUT_LEN,
                        help="shortest output length drawn (default: %(default)s)")
    parser.add_argument("--max-output-len", type=int, default=DEFAULT_MAX_OUTPUT_LEN,
                        help="longest output length drawn (default: %(default)s)")
    parser.add_argument("--hf-batch-size", type=int, default=DEFAULT_HF_BATCH_SIZE,
                        help="static batch size of the hf backend (default: %(default)s)")
    parser.add_argument("--sampling", choices=SAMPLING, default="greedy",
                        help="pagedllm's sampling: greedy, penalties (temperature, top-p/k, presence/frequency/"
                             "repetition penalties, logprobs=5), or compare (both on one engine, with their ratio); "
                             "the hf peer is always greedy (default: %(default)s)")
    parser.add_argument("--lora", type=int, default=0, metavar="N",
                        help="also run the workload with N random LoRA adapters spread over the requests "
                             "(round-robin) on the same engine, after the base-model run, and report the ratio "
                             "(default: 0, no LoRA run)")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the --lora adapters (default: %(default)s)")
    parser.add_argument("--lora-sweep", action="store_true",
                        help="with --lora N: one LoRA run per adapter count 1..N, for the cost per extra adapter")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    add_engine_args(parser)
    return parser


def rates(raw: dict) -> dict:
    """Add requests/s, output tok/s and total (prompt + output) tok/s to a backend's counts."""
    elapsed = raw["elapsed_s"]
    return {
        **raw,
        "requests_per_s": raw["num_requests"] / elapsed,
        "output_tokens_per_s": raw["output_tokens"] / elapsed,
        "total_tokens_per_s": (raw["prompt_tokens"] + raw["output_tokens"]) / elapsed,
    }


def run_pagedllm(llm, requests: list[SyntheticRequest], sampling: str = "greedy", loras: list | None = None) -> dict:
    """All requests in one ``LLM.generate`` call; output tokens are those actually returned.
    ``loras``: adapters given to the requests in turn (None: the base model)."""
    from pagedllm import SamplingParams

    prompts = [r.prompt_token_ids for r in requests]
    penalties = sampling == "penalties"
    params = [SamplingParams(max_tokens=r.output_len, ignore_eos=True,
                             **(dict(PENALTIES_PROFILE, seed=i) if penalties else {"temperature": 0.0}))
              for i, r in enumerate(requests)]
    start = time.perf_counter()
    lora_request = [loras[i % len(loras)] for i in range(len(requests))] if loras else None
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    wanted = sum(r.output_len for r in requests)
    if produced != wanted:
        print(f"warning: pagedllm returned {produced} output tokens, the workload asked for {wanted}",
              file=sys.stderr)
    return {
        "elapsed_s": elapsed,
        "num_requests": len(requests),
        "prompt_tokens": sum(len(r.prompt_token_ids) for r in requests),
        "output_tokens": produced,
    }


def bench_pagedllm(args, dtype_name: str, requests: list[SyntheticRequest]) -> dict:
    """Build the engine (untimed), warm it up on two short requests, then time the workload.

    With ``--sampling compare`` the same engine runs the greedy and the penalties profile
    (prefix cache reset in between); the result is the greedy run with the other attached.
    """
    from pagedllm import LLM, SamplingParams

    t0 = time.perf_counter()
    lora_args = {}
    if getattr(args, "lora", 0):  # bench models reuses this runner without the LoRA flags
        lora_args = dict(enable_lora=True, max_loras=max(args.lora, args.max_loras),
                         max_lora_rank=max(args.lora_rank, args.max_lora_rank))
    llm = LLM(**(engine_kwargs(args, dtype=dtype_name) | lora_args))
    load_s = time.perf_counter() - t0
    warm = [r.prompt_token_ids for r in requests[:2]]
    llm.generate(warm, SamplingParams(max_tokens=WARMUP_TOKENS, ignore_eos=True, temperature=0.0), use_tqdm=False)
    profiles = ["greedy", "penalties"] if args.sampling == "compare" else [args.sampling]
    runs = {}
    engine = llm.llm_engine
    for profile in profiles:
        engine.block_manager.reset_prefix_cache()
        steps, reduced = engine.stats.num_steps, distributed.all_reduced_bytes  # rank 0's count, this process's
        sent = _sent_bytes(engine)
        runs[profile] = rates(run_pagedllm(llm, requests, profile))
        runs[profile]["sampling"] = profile
        steps = engine.stats.num_steps - steps
        runs[profile]["all_reduced_bytes_per_step"] = (distributed.all_reduced_bytes - reduced) / max(steps, 1)
        runs[profile]["stage_sent_bytes_per_step"] = (_sent_bytes(engine) - sent) / max(steps, 1)
    result = runs[profiles[0]]
    result.update(tensor_parallel_size=engine.config.tensor_parallel_size,
                  pipeline_parallel_size=engine.config.pipeline_parallel_size,
                  torch_threads_per_rank=getattr(engine.executor, "num_threads", None) or _threads(),
                  executor=type(engine.executor).__name__)
    if len(runs) == 2:
        result["penalties_run"] = runs["penalties"]
        result["penalties_over_greedy"] = (runs["penalties"]["output_tokens_per_s"]
                                           / runs["greedy"]["output_tokens_per_s"])
    if getattr(args, "lora", 0):
        result.update(bench_lora(llm, args, requests, result))
    result.update(load_s=load_s, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=llm.llm_engine.max_num_batched_tokens)  # the budget in force
    result.update(kv_cache_room(engine, requests))
    engine.shutdown()  # worker processes (tensor parallelism) end here, before the next backend runs
    del llm, engine
    gc.collect()
    return result


def kv_cache_room(engine, requests: list[SyntheticRequest]) -> dict:
    """The KV cache's element type, blocks, and how many sequences it holds at once: of the workload's
    longest request (prompt + output tokens), and of max_model_len (vLLM's "maximum concurrency")."""
    blocks, bs = engine.block_manager.num_blocks, engine.config.block_size
    longest = max(len(r.prompt_token_ids) + r.output_len for r in requests)
    return {"kv_cache_dtype": engine.config.kv_cache_dtype, "kv_blocks": blocks, "block_size": bs,
            "longest_request_tokens": longest, "max_concurrent_seqs": blocks // -(-longest // bs),
            "max_concurrency_at_max_model_len": blocks * bs / engine.max_model_len}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def bench_lora(llm, args, requests: list[SyntheticRequest], base: dict) -> dict:
    """The greedy workload again with ``args.lora`` random adapters spread over the requests (and, with
    ``--lora-sweep``, with 1..N of them): their output tok/s over the base run's, on the same engine."""
    import tempfile

    from pagedllm import LoRARequest, SamplingParams
    from pagedllm.benchmarks.lora_workload import write_random_adapters

    with tempfile.TemporaryDirectory(prefix="pagedllm-bench-lora-") as tmp:
        paths = write_random_adapters(llm.llm_engine.model_path, args.lora, args.lora_rank, tmp, seed=args.seed)
        loras = [LoRARequest(f"bench-{i}", i + 1, p) for i, p in enumerate(paths)]
        warm = [r.prompt_token_ids for r in requests[:len(loras)]]
        llm.generate(warm, SamplingParams(max_tokens=WARMUP_TOKENS, ignore_eos=True, temperature=0.0),
                     use_tqdm=False, lora_request=loras[:len(warm)])  # load them all (untimed)
        counts = range(1, args.lora + 1) if args.lora_sweep else [args.lora]
        runs = {}
        for k in counts:
            llm.llm_engine.block_manager.reset_prefix_cache()
            runs[k] = rates(run_pagedllm(llm, requests, "greedy", loras[:k]))
            print(f"pagedllm with {k} LoRA adapter(s): {runs[k]['output_tokens_per_s']:.1f} tok/s", file=sys.stderr,
                  flush=True)
        # the base model again, after: the first timed run also pays first touches of the KV cache's pages
        llm.llm_engine.block_manager.reset_prefix_cache()
        base_again = rates(run_pagedllm(llm, requests, "greedy"))
    base_rate = None
    if base.get("sampling") == "greedy":  # the better base run: the ratio is not flattered by a slow one
        base_rate = max(base["output_tokens_per_s"], base_again["output_tokens_per_s"])
    out = {"lora_adapters": args.lora, "lora_rank": args.lora_rank, "base_run_after_lora": base_again,
           "lora_runs": {str(k): r for k, r in runs.items()}}
    if base_rate:
        out["lora_over_base"] = runs[args.lora]["output_tokens_per_s"] / base_rate
        if len(runs) > 1:  # cost of each adapter beyond the first, as a share of the base throughput
            first, last = runs[1]["output_tokens_per_s"], runs[args.lora]["output_tokens_per_s"]
            out["lora_cost_per_extra_adapter"] = (first - last) / (args.lora - 1) / base_rate
    return out


def bench_hf(model_path: str, dtype, device, requests: list[SyntheticRequest], batch_size: int) -> dict:
    """Load transformers (untimed), warm up on two short requests, then time static batches."""
    from dataclasses import replace

    from pagedllm.benchmarks.hf_backend import generate_batch, load_hf_model, pad_token_id_for, run_hf
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    model = load_hf_model(model_path, dtype).to(device)
    pad_id = pad_token_id_for(model, AutoTokenizer.from_pretrained(model_path))
    load_s = time.perf_counter() - t0
    generate_batch(model, [replace(r, output_len=WARMUP_TOKENS) for r in requests[:2]], pad_id)
    result = rates(run_hf(model, requests, batch_size=batch_size, pad_token_id=pad_id))
    result["load_s"] = load_s
    del model
    gc.collect()
    return result


def run_benchmark(args: argparse.Namespace) -> dict:
    """Resolve model and dtype once, build the workload once, run the chosen backend(s)."""
    import torch
    from transformers import AutoTokenizer

    from pagedllm.config import resolve_dtype
    from pagedllm.loader import resolve_model

    if args.lora < 0 or args.lora_rank < 1:
        raise ValueError(f"--lora must be >= 0 and --lora-rank >= 1, got {args.lora} and {args.lora_rank}")
    for name in ("num_prompts", "hf_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(dtype).removeprefix("torch.")
    resolved = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    requests = build_workload(tokenizer, args.num_prompts, args.min_output_len, args.max_output_len, seed=args.seed)

    stats = workload_stats(requests)
    load_before = load_avg()
    print(f"workload: {stats['num_requests']} requests, {stats['prompt_tokens']} prompt + "
          f"{stats['output_tokens']} output tokens; {dtype_name} on {device}", file=sys.stderr)
    results = {}
    if args.backend in ("pagedllm", "both") and _parallel(args):  # the one-rank baseline, first
        one_rank = argparse.Namespace(**{**vars(args), "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                                         "distributed_executor_backend": None})
        results["pagedllm_tp1"] = _done("pagedllm (TP=1)", bench_pagedllm(one_rank, dtype_name, requests))
    if args.backend in ("pagedllm", "both") and _parallel(args) and _on_ray(args):  # its peer: mp
        local = argparse.Namespace(**{**vars(args), "distributed_executor_backend": "mp"})
        results["pagedllm_mp"] = _done("pagedllm (mp)", bench_pagedllm(local, dtype_name, requests))
    if args.backend in ("pagedllm", "both"):
        results["pagedllm"] = _done("pagedllm", bench_pagedllm(args, dtype_name, requests))
    if args.backend in ("hf", "both"):
        results["hf"] = _done("hf", bench_hf(resolved.path, dtype, device, requests, args.hf_batch_size))
    ratio = None
    if "pagedllm" in results and "hf" in results:
        ratio = results["pagedllm"]["output_tokens_per_s"] / results["hf"]["output_tokens_per_s"]
    return {
        "benchmark": "throughput",
        "model": args.model,
        "dtype": dtype_name,
        "device": str(device),
        "seed": args.seed,
        "workload": stats,
        "results": results,
        "ratio_pagedllm_over_hf": ratio,
        "ratio_tp_over_tp1": (results["pagedllm"]["output_tokens_per_s"]
                              / results["pagedllm_tp1"]["output_tokens_per_s"] if "pagedllm_tp1" in results else None),
        "ratio_ray_over_mp": (results["pagedllm"]["output_tokens_per_s"]
                              / results["pagedllm_mp"]["output_tokens_per_s"] if "pagedllm_mp" in results else None),
        "machine": machine_info(device, load_before),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _sent_bytes(engine) -> int:
    """Bytes every rank has sent to another pipeline stage (activations down, logits back to the driver)."""
    if engine.config.pipeline_parallel_size == 1:
        return 0
    return sum(r["sent_bytes"] for r in engine.executor.stats())


def _parallel(args) -> bool:
    return args.tensor_parallel_size * getattr(args, "pipeline_parallel_size", 1) > 1


def _on_ray(args) -> bool:
    return getattr(args, "distributed_executor_backend", None) == "ray"


def _done(name: str, result: dict) -> dict:
    """Say on stderr when a backend finishes: a full run takes minutes on a CPU."""
    print(f"{name}: {result['output_tokens']} output tokens in {result['elapsed_s']:.1f} s "
          f"({result['output_tokens_per_s']:.1f} tok/s)", file=sys.stderr, flush=True)
    return result


def format_table(report: dict) -> str:
    """A short markdown table of the results, with the pagedllm/hf ratio when both ran."""
    lines = [
        "| backend | requests/s | output tok/s | total tok/s | elapsed (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        label = f"hf (batch {r['batch_size']})" if name == "hf" else f"{name} ({r.get('sampling', 'greedy')})"
        if name.startswith("pagedllm") and _ranks(r) > 1 or name == "pagedllm_tp1":
            pp = r.get("pipeline_parallel_size", 1)
            label = (f"pagedllm {_layout(r)}{_executor_label(r)} ({r['torch_threads_per_rank']} "
                     f"thread(s) per rank, {r['all_reduced_bytes_per_step'] / 1024:.0f} KiB all-reduced per step "
                     "per rank" + (f", {r['stage_sent_bytes_per_step'] / 1024:.0f} KiB sent between stages per "
                                   "step, all ranks" if pp > 1 else "") + ")")
        for row_label, row in [(label, r)] + ([("pagedllm (penalties)", r["penalties_run"])]
                                              if "penalties_run" in r else []):
            lines.append(f"| {row_label} | {row['requests_per_s']:.2f} | {row['output_tokens_per_s']:.1f} | "
                         f"{row['total_tokens_per_s']:.1f} | {row['elapsed_s']:.1f} |")
    w = report["workload"]
    lines.append("")
    lines.append(f"{w['num_requests']} requests, {w['prompt_tokens']} prompt + {w['output_tokens']} output tokens, "
                 f"{report['model']}, {report['dtype']} on {report['device']}")
    if report.get("ratio_tp_over_tp1") is not None:
        lines.append(f"ratio {_layout(report['results']['pagedllm'])}/TP=1 (output tok/s): "
                     f"{report['ratio_tp_over_tp1']:.2f}x")
    if report.get("ratio_ray_over_mp") is not None:
        lines.append(f"ratio ray/mp at {_layout(report['results']['pagedllm'])} (output tok/s): "
                     f"{report['ratio_ray_over_mp']:.2f}x")
    if report["ratio_pagedllm_over_hf"] is not None:
        lines.append(f"ratio pagedllm/hf (output tok/s): {report['ratio_pagedllm_over_hf']:.2f}x")
    paged = report["results"].get("pagedllm", {})
    if "kv_blocks" in paged:
        lines.append(f"KV cache {paged['kv_cache_dtype']}: {paged['kv_blocks']} blocks of {paged['block_size']} tokens, "
                     f"room for {paged['max_concurrent_seqs']} concurrent sequences of the longest request "
                     f"({paged['longest_request_tokens']} tokens); {paged['max_concurrency_at_max_model_len']:.2f}x "
                     "at max_model_len")
    if "penalties_over_greedy" in paged:
        lines.append(f"penalties/greedy (output tok/s): {paged['penalties_over_greedy']:.1%}")
    for k, run in paged.get("lora_runs", {}).items():
        lines.append(f"pagedllm with {k} LoRA adapter(s) of rank {paged['lora_rank']}: "
                     f"{run['output_tokens_per_s']:.1f} output tok/s")
    if "lora_over_base" in paged:
        lines.append(f"LoRA ({paged['lora_adapters']} adapters)/base (output tok/s): {paged['lora_over_base']:.1%}")
    if "lora_cost_per_extra_adapter" in paged:
        lines.append(f"cost per extra adapter in a batch: {paged['lora_cost_per_extra_adapter']:.1%} of base tok/s")
    return "\n".join(lines)


def _ranks(result: dict) -> int:
    return result.get("tensor_parallel_size", 1) * result.get("pipeline_parallel_size", 1)


def _layout(result: dict) -> str:
    """``TP=2``, or ``TP=1 PP=2`` / ``TP=2 PP=2`` with pipeline stages."""
    pp = result.get("pipeline_parallel_size", 1)
    return f"TP={result.get('tensor_parallel_size', 1)}" + (f" PP={pp}" if pp > 1 else "")


def _executor_label(result: dict) -> str:
    names = {"MultiprocExecutor": " mp", "RayExecutor": " ray"}
    return names.get(result.get("executor"), "") if _ranks(result) > 1 else ""


def main(args: argparse.Namespace) -> int:
    """Entry of ``pagedllm bench throughput``: run, print the table, optionally write JSON."""
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    return 0
