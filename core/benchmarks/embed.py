"""``pagedllm bench embed``: embeddings per second, pagedllm against sentence-transformers, same run.

The workload is seeded English text of mixed lengths (16..256 tokens by default), cut to exact
token counts with the model's own tokenizer, so every backend embeds the same inputs. Peers:
``SentenceTransformer.encode`` (batch 32, fp32: what a RAG user runs instead), ``LLM.embed``
offline at each ``--dtype`` (fp32 and the engine's default, ``auto``: bf16 on CPUs with
AVX512-BF16/AMX), and a ``pagedllm serve`` subprocess at the default dtype loaded by
``concurrency`` clients of one text each. The served load comes from two clients: raw HTTP over
aiohttp (what vLLM's ``benchmark_serving`` uses: it costs the shared CPU ~0.2 ms a request) and
the ``openai`` SDK (~1.2 ms a request, which on a 2-core machine is CPU the server does not get).
When a bf16 row runs, sentence-transformers runs in bf16 too, so the reader sees how much of a bf16
win is the dtype. Every pagedllm row's vectors are compared with sentence-transformers' fp32 ones
(lowest cosine), and the served vectors with the offline ones of the same dtype, so a fast wrong
answer cannot pass for a result.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import subprocess
import sys
import time

from pagedllm.benchmarks.report import load_avg, machine_info, write_json
from pagedllm.benchmarks.workload import DETAILS, TEMPLATES, TOPICS

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # bundled


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedding model (default: %(default)s, bundled)")
    parser.add_argument("--num-texts", type=int, default=2000, help="texts to embed (default: %(default)s)")
    parser.add_argument("--min-len", type=int, default=16, help="shortest text in tokens (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=256, help="longest text in tokens (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentence-transformers batch (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="served: clients in flight (default: %(default)s)")
    parser.add_argument("--skip", action="append", default=[], choices=("st", "served", "served-openai"),
                        help="leave a backend out (repeatable): st, served (both served rows), served-openai "
                             "(the openai SDK's row only)")
    parser.add_argument("--dtype", action="append", choices=("auto", "float32", "bfloat16"),
                        help="pagedllm's dtype, repeatable (default: float32 and auto; auto is what "
                             "LLM(...) uses unless told: bf16 on CPUs with AVX512-BF16/AMX, else fp32)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="pagedllm's tokens per step (default: the engine's)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    return parser


def build_texts(tokenizer, n: int, min_len: int, max_len: int, seed: int) -> list[str]:
    """``n`` texts whose encodings (special tokens included) have lengths drawn uniformly in [min_len, max_len]."""
    rng = random.Random(seed)
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])  # [CLS] and [SEP] for BERT
    texts = []
    for _ in range(n):
        target = rng.randint(min_len, max_len)
        words = []
        while len(words) < target * 2:
            topic, other = rng.sample(TOPICS, 2)
            words += rng.choice(TEMPLATES).format(topic=topic, other=other, audience="a student").split()
            words += rng.choice(DETAILS).split()
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[:max(target - special, 1)]))
    return texts


def _timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_st(path: str, texts: list[str], batch_size: int, dtype: str = "float32"):
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": getattr(torch, dtype)})
    st.max_seq_length = max(st.max_seq_length or 0, 512)
    st.encode(texts[:64], batch_size=batch_size)  # warm-up
    return _timed(lambda: st.encode(texts, batch_size=batch_size, convert_to_numpy=True))


def bench_pagedllm(model: str, texts: list[str], budget: int | None, dtype: str = "float32"):
    import numpy as np

    from pagedllm import LLM

    kwargs = {"max_num_batched_tokens": budget} if budget else {}
    llm = LLM(model, dtype=dtype, max_model_len=512, **kwargs)
    llm.embed(texts[:64], use_tqdm=False)  # warm-up
    outs, elapsed = _timed(lambda: llm.embed(texts, use_tqdm=False))
    vectors = np.array([o.outputs.embedding for o in outs], dtype=np.float32)
    del llm
    return vectors, elapsed, sum(len(o.prompt_token_ids) for o in outs)


def resolved_dtypes(requested: list[str] | None) -> list[str]:
    """The dtype names pagedllm runs at, ``auto`` resolved as the engine does, without repeats."""
    import torch

    from pagedllm.config import resolve_dtype

    names = []
    for dtype in requested or ["float32", "auto"]:
        name = str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch.")
        if name not in names:
            names.append(name)
    return names


def min_cosine(a, b) -> float:
    import numpy as np

    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


async def _load(embed_one, texts: list[str], concurrency: int):
    """``concurrency`` clients of one text each, ``await embed_one(text)`` -> its vector; a warm-up, then all of
    ``texts`` timed. Returns (errors, seconds, vectors in the order of ``texts``; None where a request failed)."""
    vectors: list = [None] * len(texts)
    errors = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(i, text):
        nonlocal errors
        async with sem:
            try:
                vectors[i] = await embed_one(text)
            except Exception:  # counted and reported
                errors += 1

    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts[:concurrency * 2])))  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    return errors, time.perf_counter() - start, vectors


async def _http_clients(base_url: str, model: str, texts: list[str], concurrency: int):
    """Raw HTTP over aiohttp; base64 vectors, as the SDK asks for them."""
    import aiohttp
    import numpy as np

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def embed_one(text):
            async with session.post(f"{base_url}/embeddings", json={
                    "model": model, "input": text, "encoding_format": "base64"}) as response:
                body = await response.json()
            return np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")

        return await _load(embed_one, texts, concurrency)


async def _openai_clients(base_url: str, model: str, texts: list[str], concurrency: int):
    """The same load through the ``openai`` SDK (what applications send with)."""
    from openai import AsyncOpenAI

    # closed here, not left to the garbage collector: with an AsyncOpenAI dropped open in a running loop, later
    # aiohttp requests in that loop could wait forever (their connections never came up; 1 run in 1 vs 0 in 10)
    async with AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600) as client:
        async def embed_one(text):
            return (await client.embeddings.create(model=model, input=text)).data[0].embedding

        return await _load(embed_one, texts, concurrency)


CLIENTS = {"aiohttp": _http_clients, "openai SDK": _openai_clients}


def bench_served(model: str, texts: list[str], concurrency: int, budget: int | None,
                 dtype: str = "float32", clients=tuple(CLIENTS)) -> dict:
    """A ``pagedllm serve`` subprocess (its engine alone in its process, as deployed), loaded by each
    client in turn: {client: (errors, seconds, vectors)}."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [os.path.join(os.path.dirname(sys.executable), "pagedllm"), "serve", model, "--port", str(port),
           "--dtype", dtype, "--max-model-len", "512", "--disable-log-requests"]
    if budget:
        cmd += ["--max-num-batched-tokens", str(budget)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the pagedllm server did not start") from None
                time.sleep(1)
        return {name: asyncio.run(CLIENTS[name](f"http://127.0.0.1:{port}/v1", model, texts, concurrency))
                for name in clients}
    finally:
        proc.terminate()
        proc.wait(30)


def run_benchmark(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    from pagedllm.loader import resolve_model

    path = resolve_model(args.model).path
    texts = build_texts(AutoTokenizer.from_pretrained(path), args.num_texts, args.min_len, args.max_len, args.seed)
    dtypes = resolved_dtypes(args.dtype)
    load_before = load_avg()
    results: dict = {}
    vectors = {}
    for dtype in dtypes:
        vectors[dtype], elapsed, tokens = bench_pagedllm(args.model, texts, args.max_num_batched_tokens, dtype)
        results[f"pagedllm {dtype}"] = {"texts_per_s": len(texts) / elapsed, "tokens_per_s": tokens / elapsed,
                                        "elapsed_s": elapsed, "dtype": dtype}
        print(f"pagedllm LLM.embed {dtype}: {len(texts) / elapsed:.1f} texts/s", file=sys.stderr, flush=True)
    if "st" not in args.skip:
        for dtype in ["float32"] + [d for d in dtypes if d != "float32"]:
            theirs, elapsed = bench_st(path, texts, args.batch_size, dtype)
            results[f"sentence-transformers {dtype}"] = {"texts_per_s": len(texts) / elapsed,
                                                         "tokens_per_s": tokens / elapsed, "elapsed_s": elapsed,
                                                         "batch_size": args.batch_size, "dtype": dtype}
            if dtype == "float32":
                for ours_dtype, ours in vectors.items():
                    results[f"pagedllm {ours_dtype}"]["min_cosine_to_st_fp32"] = min_cosine(ours, theirs)
            print(f"sentence-transformers encode {dtype}: {len(texts) / elapsed:.1f} texts/s", file=sys.stderr,
                  flush=True)
    if "served" not in args.skip:
        import numpy as np

        dtype = dtypes[-1]
        clients = [c for c in CLIENTS if not (c == "openai SDK" and "served-openai" in args.skip)]
        for client, (errors, elapsed, served) in bench_served(args.model, texts, args.concurrency,
                                                              args.max_num_batched_tokens, dtype, clients).items():
            got = [i for i, v in enumerate(served) if v is not None]
            row = {"texts_per_s": len(texts) / elapsed, "tokens_per_s": tokens / elapsed, "elapsed_s": elapsed,
                   "concurrency": args.concurrency, "client": client, "errors": errors, "dtype": dtype}
            if got:
                row["min_cosine_to_offline"] = min_cosine(np.array([served[i] for i in got], dtype=np.float32),
                                                          vectors[dtype][got])
            results[f"pagedllm served {dtype} ({client})"] = row
            print(f"pagedllm served {dtype}, {client} clients: {len(texts) / elapsed:.1f} texts/s", file=sys.stderr,
                  flush=True)
    return {"benchmark": "embed", "model": args.model, "num_texts": len(texts), "tokens": tokens,
            "lengths": [args.min_len, args.max_len], "seed": args.seed, "results": results,
            "machine": machine_info(torch.device("cpu"), load_before),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def format_table(report: dict) -> str:
    """Every row against sentence-transformers fp32 (the issue's peer) and against it at the row's own dtype."""
    results = report["results"]
    st = {r["dtype"]: r["texts_per_s"] for n, r in results.items() if n.startswith("sentence-transformers")}
    lines = ["| backend | texts/s | tokens/s | vs sentence-transformers fp32 | vs sentence-transformers same dtype "
             "| lowest cosine to sentence-transformers fp32 |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        fp32 = f"{r['texts_per_s'] / st['float32']:.2f}x" if "float32" in st else "-"
        same = f"{r['texts_per_s'] / st[r['dtype']]:.2f}x" if r["dtype"] in st else "-"
        cosine = f"{r['min_cosine_to_st_fp32']:.6f}" if "min_cosine_to_st_fp32" in r else "-"
        lines.append(f"| {name} | {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} | {fp32} | {same} | {cosine} |")
    lines.append("")
    lines.append(f"{report['num_texts']} texts of {report['lengths'][0]}-{report['lengths'][1]} tokens "
                 f"({report['tokens']} tokens), {report['model']}, on CPU")
    for name, r in results.items():
        if name.startswith("pagedllm served"):
            offline = results[f"pagedllm {r['dtype']}"]["texts_per_s"]
            lines.append(f"served/offline ({r['dtype']}, {r['client']} clients): {r['texts_per_s'] / offline:.2f}x at "
                         f"concurrency {r['concurrency']} ({r['errors']} errors, lowest cosine to offline "
                         f"{r.get('min_cosine_to_offline', float('nan')):.6f})")
    return "\n".join(lines)


def plot(report: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["texts_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, values, color=["#4c72b0" if n.startswith("pagedllm") else "#999999" for n in names])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.0f}", va="center")
    ax.set_xlabel("texts/s (higher is better)")
    ax.set_title(f"Embeddings, {report['model'].split('/')[-1]}, {report['num_texts']} texts")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(args: argparse.Namespace) -> int:
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    if args.output_json:
        plot(report, os.path.splitext(args.output_json)[0] + ".png")
    return 0
