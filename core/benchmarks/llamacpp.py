"""``pagedllm bench llamacpp``: pagedllm against llama.cpp built from source, same run, same GGUF file.

Two measurements, each with llama.cpp's own tools as the peer (built by ``llamacpp_build``):

- single stream: ``llama-bench -p P -n N`` (its ``ppP`` and ``tgN`` tok/s, the figures llama.cpp users
  quote) against pagedllm decoding N new tokens greedily after a P-token prompt, EOS ignored, on the
  quantized GGUF path (the default) and on the dense ``--dequantize-gguf`` path. pagedllm's decode
  rate is (N - 1) / (last token - first token), from the request's metrics: the first token is the
  prefill's, as llama-bench's tg test times generation alone.
- offline throughput: the seeded chat workload of ``bench throughput`` (identical token ids) through
  one ``LLM.generate`` call against ``llama-server -np S -cb`` (S parallel slots, continuous
  batching) loaded by S concurrent clients of ``bench serve`` on ``/v1/completions``.

Both sides use the same number of threads (``--threads``, default torch's) on the same file.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from pagedllm.benchmarks.report import load_avg, machine_info, write_json
from pagedllm.benchmarks.workload import (DEFAULT_MAX_OUTPUT_LEN, DEFAULT_MIN_OUTPUT_LEN, DEFAULT_NUM_REQUESTS,
                                          build_workload, workload_stats)
from pagedllm.entrypoints.cli_args import add_engine_args, engine_kwargs

PARTS = ("single", "offline", "both")
DEFAULT_PROMPT_LEN = 16
DEFAULT_GEN_TOKENS = 128
DEFAULT_PARALLEL = 16


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``pagedllm bench llamacpp``."""
    parser.add_argument("--part", choices=PARTS, default="both",
                        help="single (one stream, llama-bench), offline (the workload, llama-server) or both "
                             "(default: %(default)s)")
    parser.add_argument("--build", action="store_true",
                        help="build llama.cpp first if no build is cached (pip download of the llama-cpp-python "
                             "sdist, CMake; tens of minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both engines (default: torch's thread count)")
    parser.add_argument("--prompt-len", type=int, default=DEFAULT_PROMPT_LEN,
                        help="single stream: prompt tokens before decoding (default: %(default)s)")
    parser.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS,
                        help="single stream: new tokens decoded (default: %(default)s)")
    parser.add_argument("--repetitions", type=int, default=3,
                        help="single stream: timed runs of each engine, mean reported (default: %(default)s)")
    parser.add_argument("--no-dense", action="store_true",
                        help="single stream: skip pagedllm's dense --dequantize-gguf run")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                        help="offline: llama-server slots (-np) and concurrent clients (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_REQUESTS,
                        help="offline: requests in the workload (default: %(default)s)")
    parser.add_argument("--min-output-len", type=int, default=DEFAULT_MIN_OUTPUT_LEN,
                        help="offline: shortest output drawn (default: %(default)s)")
    parser.add_argument("--max-output-len", type=int, default=DEFAULT_MAX_OUTPUT_LEN,
                        help="offline: longest output drawn (default: %(default)s)")
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp's weight repacking (its default: on); auto: on, and off if a tool dies of a "
                             "signal with it (the AMX path segfaults on some sandboxed CPUs), noted in the report "
                             "(default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--plot", metavar="PNG", help="also draw the results as a bar chart to this PNG")
    add_engine_args(parser)
    return parser


def find_tools(build: bool, names: tuple[str, ...] = ("llama-bench", "llama-server")) -> dict:
    """Paths of the llama.cpp tools ``names``, building them first when ``build`` and one is not cached."""
    from pagedllm.benchmarks import llamacpp_build

    tools = {name: llamacpp_build.find_binary(name) for name in names}
    if build and not all(tools.values()):
        llamacpp_build.build()
        tools = {name: llamacpp_build.find_binary(name) for name in tools}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise SystemExit(f"llama.cpp's {', '.join(missing)} not found: run `pagedllm bench llamacpp --build` (builds "
                         f"into {llamacpp_build.cache_root()}) or set PAGEDLLM_LLAMACPP_BIN to a folder holding them")
    return {name: str(path) for name, path in tools.items()}


# -- single stream ------------------------------------------------------------------------

def llama_bench_command(binary: str, gguf: str, prompt_len: int, gen_tokens: int, threads: int,
                        repetitions: int, repack: bool = True) -> list[str]:
    return [binary, "-m", gguf, "-p", str(prompt_len), "-n", str(gen_tokens), "-t", str(threads),
            "-r", str(repetitions), "-o", "json", *([] if repack else ["--repack", "0"])]


def parse_llama_bench(stdout: str) -> dict:
    """llama-bench's ``-o json`` records into ``{"pp": {...}, "tg": {...}, "build_commit": ...}``."""
    records = json.loads(stdout)
    out: dict = {}
    for rec in records:
        if bool(rec["n_prompt"]) == bool(rec["n_gen"]):
            continue  # a pg (prompt + generation) record: not one llama-bench prints for -p/-n
        kind, tokens = ("pp", rec["n_prompt"]) if rec["n_prompt"] else ("tg", rec["n_gen"])
        out[kind] = {"tokens": tokens, "tok_s": rec["avg_ts"], "stddev_tok_s": rec["stddev_ts"],
                     "label": f"{kind}{tokens}"}
        out.update(build_commit=rec.get("build_commit"), build_number=rec.get("build_number"),
                   n_threads=rec.get("n_threads"), model_type=rec.get("model_type"), cpu_info=rec.get("cpu_info"))
    if "tg" not in out:
        raise ValueError(f"llama-bench printed no generation record: {stdout[:500]!r}")
    return out


def run_llama_bench(binary: str, gguf: str, prompt_len: int, gen_tokens: int, threads: int, repetitions: int,
                    repack: str = "auto") -> dict:
    """llama-bench with its defaults; ``repack="auto"``: if it dies of a signal, once more with ``--repack 0``
    (on this sandbox's AMX CPUs the repacked AMX matmul segfaults; the report says so)."""
    note = None
    for use_repack in ([True, False] if repack == "auto" else [repack == "on"]):
        cmd = llama_bench_command(binary, gguf, prompt_len, gen_tokens, threads, repetitions, use_repack)
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode < 0 and use_repack and repack == "auto":
            note = f"llama-bench died of signal {-done.returncode} with weight repacking; rerun with --repack 0"
            _say(note)
            continue
        if done.returncode:
            raise RuntimeError(f"llama-bench exited with {done.returncode}: {done.stderr[-2000:]}")
        return {**parse_llama_bench(done.stdout), "command": " ".join(cmd), "repack": use_repack,
                **({"repack_note": note} if note else {})}
    raise AssertionError("unreachable")


def single_stream_prompt(tokenizer, prompt_len: int) -> list[int]:
    """``prompt_len`` token ids of ordinary text (a chat prompt of the workload, cut or repeated)."""
    text = ("The history of the printing press begins with movable type, which made books cheap enough for "
            "ordinary people to own and changed how ideas spread across Europe and beyond. ")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (ids * (prompt_len // len(ids) + 1))[:prompt_len]


def run_pagedllm_single(args, prompt_ids: list[int], dequantize: bool) -> dict:
    """Load (untimed), warm up, then ``args.repetitions`` greedy runs of ``args.gen_tokens`` new tokens."""
    from pagedllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(args, dequantize_gguf=dequantize))
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=args.gen_tokens, ignore_eos=True)
    llm.generate([prompt_ids], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    decode, prefill, wall = [], [], []
    for _ in range(args.repetitions):
        engine.block_manager.reset_prefix_cache()  # every run prefills its prompt, as llama-bench's
        start = time.perf_counter()
        out = llm.generate([prompt_ids], params, use_tqdm=False)[0]
        wall.append(time.perf_counter() - start)
        m, n = out.metrics, len(out.outputs[0].token_ids)
        if n != args.gen_tokens:
            raise RuntimeError(f"pagedllm returned {n} tokens, {args.gen_tokens} were asked for")
        decode.append((n - 1) / (m.last_token_time - m.first_token_time))
        prefill.append(len(prompt_ids) / (m.first_token_time - m.arrival_time))
    result = {"decode_tok_s": statistics.fmean(decode), "stddev_decode_tok_s": _stdev(decode),
              "step_ms": 1000 / statistics.fmean(decode), "prefill_tok_s": statistics.fmean(prefill),
              "wall_tok_s": args.gen_tokens * len(wall) / sum(wall), "dequantize_gguf": dequantize,
              "dtype": str(engine.dtype).removeprefix("torch."), "torch_threads": _threads()}
    engine.shutdown()
    del llm, engine
    gc.collect()
    return result


def _stdev(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# -- offline throughput -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_command(binary: str, gguf: str, threads: int, parallel: int, ctx_per_slot: int,
                         port: int, repack: bool = True) -> list[str]:
    return [binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-np", str(parallel), "-cb",
            "-c", str(parallel * ctx_per_slot), "--host", "127.0.0.1", "--port", str(port), "--no-webui",
            *([] if repack else ["--no-repack"])]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama-server not healthy after {timeout_s:.0f} s")


def run_llama_server(binary: str, gguf: str, requests, threads: int, parallel: int, repack: str = "auto") -> dict:
    """Start llama-server with ``parallel`` slots, warm it on two short requests, then send the
    workload from ``parallel`` concurrent streaming clients (``bench serve``'s); stop it.
    ``repack="auto"``: a server that dies of a signal is run once more with ``--no-repack``."""
    note = None
    for use_repack in ([True, False] if repack == "auto" else [repack == "on"]):
        result, code, cmd = _serve_workload(binary, gguf, requests, threads, parallel, use_repack)
        if code is not None and code < 0 and use_repack and repack == "auto":
            note = f"llama-server died of signal {-code} with weight repacking; rerun with --no-repack"
            _say(note)
            continue
        if result is None or result["errors"]:
            detail = result["first_errors"] if result else f"exit code {code}"
            raise RuntimeError(f"llama-server failed the workload: {detail}")
        return {"output_tokens": result["output_tokens"], "elapsed_s": result["elapsed_s"],
                "output_tokens_per_s": result["output_tok_per_s"], "ttft_p50_s": result["ttft_p50_s"],
                "tpot_p50_s": result["tpot_p50_s"], "parallel": parallel, "command": " ".join(cmd),
                "repack": use_repack, **({"repack_note": note} if note else {})}
    raise AssertionError("unreachable")


def _serve_workload(binary: str, gguf: str, requests, threads: int, parallel: int, repack: bool):
    """(serve.run's result or None, the server's exit code if it died, the command)."""
    from dataclasses import replace

    from pagedllm.benchmarks import serve

    ctx = max(len(r.prompt_token_ids) for r in requests) + max(r.output_len for r in requests) + 8
    port = free_port()
    cmd = llama_server_command(binary, gguf, threads, parallel, ctx, port, repack)
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        ns = argparse.Namespace(base_url=f"http://127.0.0.1:{port}/v1", model=None, api_key="EMPTY",
                                concurrency=min(2, len(requests)), duration=None, server_pid=None)
        warm = asyncio.run(serve.run(ns, [replace(r, output_len=4) for r in requests[:2]]))  # untimed
        if not warm["errors"]:
            ns.concurrency = parallel
            result = asyncio.run(serve.run(ns, requests))
        else:
            result = warm
    except RuntimeError:
        if proc.poll() is None:
            raise
    finally:
        died = proc.poll()
        if died is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result, died, cmd


def run_pagedllm_offline(args, requests) -> dict:
    from pagedllm.benchmarks.throughput import bench_pagedllm

    ns = argparse.Namespace(**{**vars(args), "sampling": "greedy", "lora": 0})
    r = bench_pagedllm(ns, args.dtype, requests)
    return {"output_tokens": r["output_tokens"], "elapsed_s": r["elapsed_s"],
            "output_tokens_per_s": r["output_tokens_per_s"], "max_num_seqs": r["max_num_seqs"]}


# -- the benchmark --------------------------------------------------------------------------

def _check(args) -> None:
    for name in ("prompt_len", "gen_tokens", "repetitions", "parallel", "num_prompts"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.gen_tokens < 2:
        raise ValueError(f"--gen-tokens must be >= 2 (a decode rate needs two tokens), got {args.gen_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def run_benchmark(args: argparse.Namespace) -> dict:
    import torch

    from pagedllm.loader import resolve_model
    from pagedllm.tokenizer import load_tokenizer

    _check(args)
    resolved = resolve_model(args.model)
    if resolved.gguf_file is None:
        raise ValueError(f"--model {args.model!r} is not a GGUF file (resolved to {resolved.path}); "
                         "llama.cpp needs one")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    needed = {"single": ("llama-bench",), "offline": ("llama-server",)}.get(args.part, ("llama-bench", "llama-server"))
    tools = find_tools(args.build, needed)
    tokenizer = load_tokenizer(resolved.path)
    gguf = resolved.gguf_file
    load_before = load_avg()
    repack = args.repack
    from pagedllm.benchmarks.llamacpp_build import binary_version

    report: dict = {"benchmark": "llamacpp", "model": args.model, "gguf_file": gguf, "threads": threads,
                    "llama_cpp": {"tools": tools, "version": binary_version(next(iter(tools.values())))}}
    if args.part in ("single", "both"):
        prompt = single_stream_prompt(tokenizer, args.prompt_len)
        single = {"prompt_len": args.prompt_len, "gen_tokens": args.gen_tokens, "repetitions": args.repetitions}
        single["llama_bench"] = run_llama_bench(tools["llama-bench"], gguf, args.prompt_len, args.gen_tokens, threads,
                                                args.repetitions, args.repack)
        report["llama_cpp"]["build_commit"] = single["llama_bench"].get("build_commit")
        if "repack_note" in single["llama_bench"]:
            repack = "off"  # the same crash would kill the server too
        single["pagedllm"] = run_pagedllm_single(args, prompt, dequantize=False)
        if not args.no_dense:
            single["pagedllm_dense"] = run_pagedllm_single(args, prompt, dequantize=True)
        tg = single["llama_bench"]["tg"]["tok_s"]
        single["ratio_pagedllm_over_llamacpp"] = single["pagedllm"]["decode_tok_s"] / tg
        if "pagedllm_dense" in single:
            single["ratio_dense_over_llamacpp"] = single["pagedllm_dense"]["decode_tok_s"] / tg
        report["single_stream"] = single
        _say(f"single stream: llama.cpp tg{args.gen_tokens} {tg:.1f} tok/s, pagedllm "
             f"{single['pagedllm']['decode_tok_s']:.1f} tok/s")
    if args.part in ("offline", "both"):
        requests = build_workload(tokenizer, args.num_prompts, args.min_output_len, args.max_output_len, args.seed)
        offline = {"workload": workload_stats(requests)}
        offline["pagedllm"] = run_pagedllm_offline(args, requests)
        offline["llama_server"] = run_llama_server(tools["llama-server"], gguf, requests, threads, args.parallel,
                                                   repack)
        offline["ratio_pagedllm_over_llamacpp"] = (offline["pagedllm"]["output_tokens_per_s"]
                                                   / offline["llama_server"]["output_tokens_per_s"])
        report["offline"] = offline
        _say(f"offline: llama-server {offline['llama_server']['output_tokens_per_s']:.1f} tok/s, pagedllm "
             f"{offline['pagedllm']['output_tokens_per_s']:.1f} tok/s")
    report["machine"] = machine_info(torch.device("cpu"), load_before)
    report["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return report


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def format_table(report: dict) -> str:
    lines = [f"{os.path.basename(report['gguf_file'])}, {report['threads']} thread(s), llama.cpp "
             f"{report['llama_cpp'].get('version', '').removeprefix('version: ')}".rstrip()]
    for part in ("single_stream", "offline"):
        tool = report.get(part, {}).get("llama_bench" if part == "single_stream" else "llama_server", {})
        if "repack_note" in tool:
            lines.append(f"note: {tool['repack_note']}")
    single = report.get("single_stream")
    if single:
        lb = single["llama_bench"]
        lines += ["", f"single stream, {single['gen_tokens']} new tokens after a {single['prompt_len']}-token prompt:",
                  "| engine | decode tok/s | prefill tok/s | ms per decode step |", "|---|---:|---:|---:|",
                  f"| llama.cpp llama-bench ({lb['tg']['label']}, {lb.get('pp', {}).get('label', '-')}) | "
                  f"{lb['tg']['tok_s']:.1f} | {lb['pp']['tok_s']:.1f} | {1000 / lb['tg']['tok_s']:.1f} |"
                  if "pp" in lb else f"| llama.cpp llama-bench | {lb['tg']['tok_s']:.1f} | - | - |"]
        for key, label in (("pagedllm", "pagedllm, GGUF quantized"), ("pagedllm_dense", "pagedllm, --dequantize-gguf")):
            if key in single:
                r = single[key]
                lines.append(f"| {label} ({r['dtype']}) | {r['decode_tok_s']:.1f} | {r['prefill_tok_s']:.1f} | "
                             f"{r['step_ms']:.1f} |")
        lines.append(f"ratio pagedllm/llama.cpp (decode tok/s): {single['ratio_pagedllm_over_llamacpp']:.2f}x")
        if "ratio_dense_over_llamacpp" in single:
            lines.append(f"ratio pagedllm dense/llama.cpp (decode tok/s): {single['ratio_dense_over_llamacpp']:.2f}x")
    offline = report.get("offline")
    if offline:
        server = offline["llama_server"]
        w = offline["workload"]
        lines += ["", f"offline: {w['num_requests']} requests, {w['prompt_tokens']} prompt + {w['output_tokens']} "
                      "output tokens:",
                  "| engine | output tok/s | elapsed (s) |", "|---|---:|---:|",
                  f"| llama.cpp llama-server (-np {offline['llama_server']['parallel']} -cb, as many clients) | "
                  f"{server['output_tokens_per_s']:.1f} | {server['elapsed_s']:.1f} |",
                  f"| pagedllm LLM.generate | {offline['pagedllm']['output_tokens_per_s']:.1f} | "
                  f"{offline['pagedllm']['elapsed_s']:.1f} |",
                  f"ratio pagedllm/llama.cpp (output tok/s): {offline['ratio_pagedllm_over_llamacpp']:.2f}x"]
    return "\n".join(lines)


def plot_report(report: dict, out_png: str) -> str:
    """Bars of each engine's tok/s: single-stream decode and offline output, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "single_stream" in report:
        s = report["single_stream"]
        bars = [("llama.cpp", s["llama_bench"]["tg"]["tok_s"]), ("pagedllm\nGGUF", s["pagedllm"]["decode_tok_s"])]
        if "pagedllm_dense" in s:
            bars.append((f"pagedllm\ndense {s['pagedllm_dense']['dtype']}", s["pagedllm_dense"]["decode_tok_s"]))
        panels.append((f"single stream decode, {s['gen_tokens']} tokens", bars))
    if "offline" in report:
        o = report["offline"]
        panels.append((f"offline, {o['workload']['num_requests']} requests",
                       [(f"llama-server\n-np {o['llama_server']['parallel']}",
                         o["llama_server"]["output_tokens_per_s"]),
                        ("pagedllm", o["pagedllm"]["output_tokens_per_s"])]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels):
        drawn = ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["tab:gray"] + ["tab:blue"] * (len(bars) - 1))
        texts = [f"{b[1]:.0f}" if b[1] >= 10 else f"{b[1]:.1f}" for b in bars]
        ax.bar_label(drawn, labels=texts, fontsize=8, padding=2)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("output tok/s")
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"pagedllm vs llama.cpp, {os.path.basename(report['gguf_file'])}, {report['threads']} thread(s)",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def main(args: argparse.Namespace) -> int:
    """Entry of ``pagedllm bench llamacpp``: run, print the table, optionally write JSON and a plot."""
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    if args.plot:
        print(f"plot written to {plot_report(report, args.plot)}")
    return 0
