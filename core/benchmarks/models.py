"""Every native model family against the Llama path (`pagedllm bench models`), issue 7.

Issue 7's target: on a random ~135M-parameter config of each family, the native implementation's
CPU output tok/s is within 20% of the Llama path's (ratio >= 0.8) on the same benchmark; the
Transformers fallback (``model_impl="transformers"``) on the Llama config is measured and reported.
The bound asks whether each native implementation is as fast as the Llama code, so each family is
judged against the Llama path on a config of its own attention layout: grouped-KV families against
``llama`` (9 query / 3 KV heads), the families whose architecture has no grouped KV heads (gpt2,
gptj, gpt_neox, opt) against ``llama_mha`` (the Llama code with 9 KV heads). Every row's ratio to
the GQA ``llama`` row is reported beside it: that one also prices the MHA layout itself (3x the KV
cache read per decode step), which no implementation can remove, and it falls whenever the shared
layers get faster, since the extra KV traffic stays.

Each family gets SmolLM2-135M's shape where the family allows it (hidden 576, 30 layers, gated
MLP 1536, 9 query / 3 KV heads, head dim 64, vocab 49152, tied embeddings), so every config has
~135M parameters: families without grouped KV heads (gpt2, gptj, gpt_neox, opt) use 9 MHA heads;
families with a plain 2-matrix MLP get the width that keeps the layer's parameter count (2304,
or 1920 with MHA). Mixtral has 135M parameters in all (8 experts of MLP 192, top-2);
``llama_mha`` is the Llama path with 9 KV heads (MLP 1280, to keep 135M), the MHA families'
reference; ``mixtral_active`` (135M *active* parameters: 8 experts of MLP 768, 373M in all) is a
control row, reported and not judged. Weights are random (HF's own init, seed 0), saved once as
bf16 safetensors with the bundled tokenizer under ``$PAGEDLLM_CACHE_DIR/bench-models`` (default
``~/.cache/pagedllm``) and reused.

Every row runs the same seeded chat workload (``workload.py``) through the same runner as
``bench throughput`` (``throughput.bench_pagedllm``: untimed load and warm-up, greedy, EOS
ignored, so every family produces exactly the workload's output tokens). Each row runs in its
own spawned process, as ``bench adapters`` does: one family's OpenMP team, oneDNN kernel cache
and freed memory must not speed up or slow down the next.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pagedllm.benchmarks.report import load_avg, machine_info, write_json
from pagedllm.benchmarks.workload import DEFAULT_MAX_OUTPUT_LEN, DEFAULT_MIN_OUTPUT_LEN, build_workload, workload_stats
from pagedllm.entrypoints.cli_args import add_engine_args, engine_kwargs

REFERENCE = "llama"  # the Llama path, GQA (SmolLM2's 9 query / 3 KV heads): every row's ratio_to_llama
FALLBACK = "fallback"  # the Llama config through the Transformers fallback
# The Llama path with one KV head per query head: the reference of the families that have no
# grouped KV heads, which read (and write) 3x the KV cache of the GQA config per token.
MHA_REFERENCE = "llama_mha"
MHA_FAMILIES = ("gpt2", "gptj", "gpt_neox", "opt")
# Mixtral with 135M *active* parameters (373M in all: what reading every expert's weights costs).
MIXTRAL_ACTIVE = "mixtral_active"
UNJUDGED = (FALLBACK, MHA_REFERENCE, MIXTRAL_ACTIVE)  # reported only
TARGET_RATIO = 0.8  # issue 7: each native family's output tok/s >= 80% of its reference's (the Llama path)
DEFAULT_NUM_PROMPTS = 32  # 15 rows of 128 prompts would take far too long on 2 cores
FORMAT_VERSION = 1  # bump when the saved folders change: old cache entries are then ignored
META_FILE = "pagedllm_bench.json"
PER_ROW_ARGS = ("model_impl", "trust_remote_code")  # engine arguments each row sets itself (bench_folder)

# SmolLM2-135M's shape, and a tiny one for smoke runs and tests.
SHAPES = {
    "135m": dict(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, vocab=49152, max_positions=8192),
    "tiny": dict(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=49152, max_positions=2048),
}
# family -> (transformers config class, architecture); the config kwargs are in family_config.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    MHA_REFERENCE: ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "falcon": ("FalconConfig", "FalconForCausalLM"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    MIXTRAL_ACTIVE: ("MixtralConfig", "MixtralForCausalLM"),
}
# Registered natively but trust_remote_code checkpoints: transformers has no config class to build one from.
REMOTE_CODE_ARCHS = ("BaiChuanForCausalLM", "BaichuanForCausalLM", "ChatGLMModel", "ChatGLMForConditionalGeneration")


def family_config(family: str, size: str = "135m"):
    """The transformers config of ``family`` at ``size`` (see the module docstring)."""
    import transformers

    s = SHAPES[size]
    h, layers, inter, heads, kv, vocab, pos = (s["hidden"], s["layers"], s["intermediate"], s["heads"],
                                               s["kv_heads"], s["vocab"], s["max_positions"])
    head_dim = h // heads
    # A plain 2-matrix MLP (no gate) gets the width that keeps the layer at the gated shape's
    # parameter count (and so its matmul FLOPs per token): 2304 with 3 KV heads, 1920 with MHA.
    layer = 2 * h * h + 2 * h * kv * head_dim + 3 * h * inter
    plain_gqa, plain_mha = (layer - 2 * h * h - 2 * h * kv * head_dim) // (2 * h), (layer - 4 * h * h) // (2 * h)
    gated_mha = (layer - 4 * h * h) // (3 * h)  # llama_mha: 1280
    common = dict(vocab_size=vocab, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(common, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=pos)
    kwargs = {
        "llama": llama_like,
        "mistral": llama_like,  # the config's own sliding_window (4096) kept: longer than any request here
        "qwen2": llama_like,
        "qwen3": dict(llama_like, head_dim=head_dim),
        "phi3": llama_like,
        "gemma": dict(llama_like, head_dim=head_dim),
        "gemma2": dict(llama_like, head_dim=head_dim, query_pre_attn_scalar=head_dim),  # soft-caps, window kept
        MHA_REFERENCE: dict(llama_like, num_key_value_heads=heads, intermediate_size=gated_mha),
        # 135M parameters in all: 8 experts of a 1/8 width, top-2 (so a quarter of the dense MLP's work)
        "mixtral": dict(llama_like, intermediate_size=inter // 8, num_local_experts=8, num_experts_per_tok=2,
                        sliding_window=None),
        # 135M *active* parameters: top-2 of 8 experts of half the width, 2.8x the weights in all
        MIXTRAL_ACTIVE: dict(llama_like, intermediate_size=inter // 2, num_local_experts=8, num_experts_per_tok=2,
                             sliding_window=None),
        "phi": dict(llama_like, intermediate_size=plain_gqa, partial_rotary_factor=0.5),
        "falcon": dict(common, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                       new_decoder_architecture=True, num_kv_heads=kv, ffn_hidden_size=plain_gqa,
                       max_position_embeddings=pos),
        "gpt2": dict(common, n_embd=h, n_layer=layers, n_head=heads, n_inner=plain_mha, n_positions=min(pos, 2048)),
        "gptj": dict(common, n_embd=h, n_layer=layers, n_head=heads, n_inner=plain_mha, rotary_dim=head_dim // 4,
                     n_positions=pos),
        "gpt_neox": dict(common, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=plain_mha, rotary_pct=0.25, max_position_embeddings=pos),
        "opt": dict(common, hidden_size=h, num_hidden_layers=layers, ffn_dim=plain_mha, num_attention_heads=heads,
                    word_embed_proj_dim=h, max_position_embeddings=min(pos, 2048)),
    }[family]
    config_cls, arch = FAMILIES[family]
    return getattr(transformers, config_cls)(architectures=[arch], **kwargs)


def model_folder(family: str, size: str, cache_dir: str | os.PathLike) -> Path:
    """The cached folder of ``family`` at ``size``: keyed by its config, so a changed config rebuilds."""
    config = json.dumps(family_config(family, size).to_diff_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{config}|v{FORMAT_VERSION}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{family}-{size}-{digest}"


def default_cache_dir() -> Path:
    from pagedllm.loader.gguf import cache_root

    return cache_root() / "bench-models"


def count_params(model) -> tuple[int, int]:
    """(total, active) parameters; tied weights count once; MoE experts count ``top_k / num_experts``."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    num_experts = getattr(model.config, "num_local_experts", None)
    if not experts or not num_experts:
        return total, total
    return total, total - experts + experts * model.config.num_experts_per_tok // num_experts


def build_model_folder(family: str, size: str, folder: str, tokenizer_path: str) -> dict:
    """Save ``family``'s random model (bf16 safetensors + tokenizer) to ``folder``; return its metadata.

    Written to a temporary sibling then renamed, so an interrupted build never leaves a folder
    that looks complete.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = family_config(family, size)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    total, active = count_params(model)
    meta = {"family": family, "size": size, "architecture": config.architectures[0],
            "params_total": total, "params_active": active}
    tmp = f"{folder}.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
    Path(tmp, META_FILE).write_text(json.dumps(meta, indent=2))
    try:
        os.rename(tmp, folder)
    except OSError:  # built meanwhile by another run: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def build_model_folders(todo: list[tuple[str, str, str]], tokenizer_path: str) -> dict[str, str]:
    """Build each ``(family, size, folder)`` in turn (in one fresh process for all); the errors by family."""
    errors = {}
    for family, size, folder in todo:
        print(f"{family}: building a random {size} model in {folder}", file=sys.stderr, flush=True)
        try:
            build_model_folder(family, size, folder, tokenizer_path)
        except Exception as exc:  # the others still get built
            errors[family] = f"building the model failed: {type(exc).__name__}: {exc}"
    return errors


def ensure_model_folders(families: list[str], size: str, cache_dir, tokenizer_path: str
                         ) -> tuple[dict[str, Path], dict[str, str]]:
    """The cached folder of each family, the missing ones built first in one fresh process; build errors."""
    folders = {family: model_folder(family, size, cache_dir) for family in families}
    todo = [(family, size, str(folder)) for family, folder in folders.items() if not (folder / META_FILE).exists()]
    if not todo:
        return folders, {}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return folders, _in_fresh_process(build_model_folders, todo, tokenizer_path)


def bench_folder(folder: str, model_impl: str, engine: dict, requests) -> dict:
    """One row, in its own process: ``bench throughput``'s pagedllm runner on ``folder``."""
    import torch
    from transformers import AutoConfig

    from pagedllm.benchmarks.throughput import bench_pagedllm
    from pagedllm.models.registry import resolve_model_class

    model_class = resolve_model_class(AutoConfig.from_pretrained(folder), model_impl)
    args = argparse.Namespace(model=folder, sampling="greedy", model_impl=model_impl, trust_remote_code=False,
                              **engine)
    result = bench_pagedllm(args, engine["dtype"], requests)
    result.update(model_class=f"{model_class.__module__}.{model_class.__name__}",
                  torch_threads=torch.get_num_threads())
    return result


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def reference_of(name: str) -> str:
    """The row a family is judged against: the Llama path with the same attention layout."""
    return MHA_REFERENCE if name in MHA_FAMILIES else REFERENCE


def parse_families(text: str | None) -> list[str]:
    """Comma-separated names (``all`` = every family, the control rows and the fallback); llama always
    runs first, and llama_mha next when an MHA family is asked for (their reference)."""
    if not text or text == "all":
        names = [*FAMILIES, FALLBACK]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES and n != FALLBACK]
    if unknown:
        raise ValueError(f"--families: unknown {unknown}; choose from {', '.join([*FAMILIES, FALLBACK])} or all")
    names = list(dict.fromkeys(names))
    refs = [REFERENCE] + ([MHA_REFERENCE] if any(n in MHA_FAMILIES for n in names) else [])
    return refs + [n for n in names if n not in refs]  # the ratios need the reference rows


def not_covered() -> dict[str, str]:
    """Registered native architectures that this benchmark has no config for, with the reason."""
    from pagedllm.models.registry import supported_architectures

    covered = {arch for _, arch in FAMILIES.values()}
    return {arch: ("trust_remote_code checkpoint, no transformers config class to build a random one from"
                   if arch in REMOTE_CODE_ARCHS else "no random config in bench models' FAMILIES yet")
            for arch in supported_architectures() if arch not in covered}


def add_ratios(rows: dict[str, dict]) -> dict[str, dict]:
    """Each row's output tok/s over the GQA llama row's (``ratio_to_llama``) and over its reference's
    (``ratio_to_reference``, see ``reference_of``), and whether a native family meets the 0.8 bound
    against its reference.

    The fallback, llama_mha and mixtral_active are only reported (``meets_target`` None), as is a row
    that did not run or whose reference did not.
    """
    def ratio(row: dict, ref_name: str) -> float | None:
        ref = rows.get(ref_name, {}).get("output_tokens_per_s")
        return row["output_tokens_per_s"] / ref if ref and "output_tokens_per_s" in row else None

    for name, row in rows.items():
        row["ratio_to_llama"] = ratio(row, REFERENCE)
        row["reference"] = reference_of(name)
        row["ratio_to_reference"] = ratio(row, row["reference"])
        judged = name not in UNJUDGED and row["ratio_to_reference"] is not None
        row["meets_target"] = row["ratio_to_reference"] >= TARGET_RATIO if judged else None
    return rows


def run_benchmark(args: argparse.Namespace) -> dict:
    """Build (or reuse) each family's folder, run the workload on each in a fresh process, compare."""
    import torch
    from transformers import AutoTokenizer

    from pagedllm.config import resolve_dtype
    from pagedllm.loader import resolve_model

    _check_counts(args)
    names = parse_families(args.families)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    tokenizer_path = resolve_model(args.model).path
    min_len, max_len = ((args.output_len, args.output_len) if args.output_len
                        else (DEFAULT_MIN_OUTPUT_LEN, DEFAULT_MAX_OUTPUT_LEN))
    requests = build_workload(AutoTokenizer.from_pretrained(tokenizer_path), args.num_prompts, min_len, max_len,
                              seed=args.seed)
    stats = workload_stats(requests)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    engine = engine_kwargs(args, dtype=dtype_name)
    engine.pop("model")  # the tokenizer's source; each row runs its own folder
    load_before = load_avg()
    print(f"workload: {stats['num_requests']} requests, {stats['prompt_tokens']} prompt + {stats['output_tokens']} "
          f"output tokens; {dtype_name} on {device}; rows: {', '.join(names)}", file=sys.stderr, flush=True)

    folders, build_errors = ensure_model_folders([n for n in names if n != FALLBACK], args.size, cache_dir,
                                                 tokenizer_path)
    rows = _run_rounds(args.repeat, names, folders, build_errors, engine, requests)
    add_ratios(rows)
    return _report(args, rows, stats, dtype_name, device, load_before)


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse a count below 1 before anything is built or loaded (the error names the CLI flag)."""
    for name in ("num_prompts", "output_len", "repeat"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _run_rounds(repeat: int, names: list, folders: dict, build_errors: dict, engine: dict, requests) -> dict:
    """Each row's figures, median over ``repeat`` rounds; a row that fails keeps its error and is not run again."""
    rows = {}
    for rep in range(repeat):  # rounds over all rows, so a slow spell of the machine hits every row
        for name in names:
            if "error" in rows.get(name, {}):
                continue
            family, impl = (REFERENCE, "transformers") if name == FALLBACK else (name, "native")
            row = rows.setdefault(name, {"family": family, "model_impl": impl, "runs_output_tokens_per_s": []})
            try:
                if family in build_errors:
                    raise RuntimeError(build_errors[family])
                folder = folders[family]
                meta = json.loads((folder / META_FILE).read_text())
                row.update(architecture=meta["architecture"], params_total=meta["params_total"],
                           params_active=meta["params_active"], folder=str(folder))
                result = _in_fresh_process(bench_folder, str(folder), impl, engine, requests)
                row["runs_output_tokens_per_s"].append(result["output_tokens_per_s"])
                row.update(result, output_tokens_per_s=statistics.median(row["runs_output_tokens_per_s"]))
                print(f"{name} (round {rep + 1}/{repeat}): {result['output_tokens']} output tokens in "
                      f"{result['elapsed_s']:.1f} s ({result['output_tokens_per_s']:.1f} tok/s)",
                      file=sys.stderr, flush=True)
            except Exception as exc:  # one broken family must not hide the others' figures
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{name}: FAILED: {row['error']}", file=sys.stderr, flush=True)
    return rows


def _report(args: argparse.Namespace, rows: dict, stats: dict, dtype_name: str, device, load_before) -> dict:
    """The saved report: the run's settings, every row, and the verdicts drawn from the ratios."""
    ran = [r for r in rows.values() if "output_tokens" in r]
    return {
        "benchmark": "models",
        "size": args.size,
        "dtype": dtype_name,
        "device": str(device),
        "seed": args.seed,
        "repeat": args.repeat,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "workload": stats,
        "reference": REFERENCE,
        "mha_reference": MHA_REFERENCE,
        "mha_families": list(MHA_FAMILIES),
        "target_ratio": TARGET_RATIO,
        "results": rows,
        "fallback_ratio": rows.get(FALLBACK, {}).get("ratio_to_llama"),
        "all_native_meet_target": all(r["meets_target"] for n, r in rows.items() if n not in UNJUDGED),
        # Same work in every row, or the ratios mean nothing.
        "same_output_tokens": bool(ran) and all(r["output_tokens"] == stats["output_tokens"] for r in ran),
        "errors": {n: r["error"] for n, r in rows.items() if "error" in r},
        "not_covered": not_covered(),
        "machine": machine_info(device, load_before),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _millions(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}M"


def format_table(report: dict) -> str:
    """Markdown: one row per family (params, output tok/s, ratios, bound), then the fallback."""
    lines = [f"| family | params total / active | output tok/s | ratio to llama (GQA) | reference | ratio to reference "
             f"| >= {report['target_ratio']} |", "|---|---:|---:|---:|---|---:|:---:|"]
    for name, r in report["results"].items():
        label = "llama (Transformers fallback)" if name == FALLBACK else name
        if "error" in r:
            lines.append(f"| {label} | | | | | | error: {r['error'][:80]} |")
            continue
        params = _millions(r["params_total"])
        if r["params_active"] != r["params_total"]:
            params += f" / {_millions(r['params_active'])}"
        verdict = "n/a" if r["meets_target"] is None else ("pass" if r["meets_target"] else "**FAIL**")
        to_llama, to_ref = ("?" if x is None else f"{x:.2f}" for x in (r["ratio_to_llama"], r["ratio_to_reference"]))
        lines.append(f"| {label} | {params} | {r['output_tokens_per_s']:.1f} | {to_llama} | {r['reference']} | {to_ref} "
                     f"| {verdict} |")
    w, m = report["workload"], report["machine"]
    lines.append("")
    lines.append(f"{w['num_requests']} requests, {w['prompt_tokens']} prompt + {w['output_tokens']} output tokens "
                 f"each row, median of {report['repeat']} round(s), {report['size']} configs, {report['dtype']} on {report['device']}, "
                 f"OMP_NUM_THREADS={m['omp_num_threads']}, load {m['load_avg_1m']}")
    if report["fallback_ratio"] is not None:
        lines.append(f"Transformers fallback / native llama (output tok/s): {report['fallback_ratio']:.2f}")
    lines.append(f"same output tokens in every row: {'yes' if report['same_output_tokens'] else 'NO'}")
    if report["not_covered"]:
        lines.append("not covered: " + ", ".join(f"{a} ({why})" for a, why in report["not_covered"].items()))
    return "\n".join(lines)


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``pagedllm bench models``."""
    parser.add_argument("--families", default="all",
                        help=f"comma-separated rows: {', '.join(FAMILIES)}, {FALLBACK} (the llama config through "
                             "model_impl='transformers'), or all (default); llama always runs, and llama_mha with "
                             f"any of {', '.join(MHA_FAMILIES)}: the references")
    parser.add_argument("--size", choices=sorted(SHAPES), default="135m",
                        help="135m: SmolLM2-135M's shape per family; tiny: 2 layers, hidden 64, for smoke runs "
                             "(default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS,
                        help="requests in the workload (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all rows; each row reports the median output tok/s of its rounds "
                             "(default: %(default)s)")
    parser.add_argument("--output-len", type=int, default=None,
                        help="fixed output tokens per request, EOS ignored (default: the workload's "
                             f"{DEFAULT_MIN_OUTPUT_LEN}-{DEFAULT_MAX_OUTPUT_LEN} draw)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the random model folders are kept (default: $PAGEDLLM_CACHE_DIR/bench-models, "
                             "~/.cache/pagedllm/bench-models)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    # The engine flags of the other benches, less --model-impl and --trust-remote-code: each row sets its own.
    add_engine_args(parser, skip=PER_ROW_ARGS, model_help="where the tokenizer and chat template come from")
    return parser


def main(args: argparse.Namespace) -> int:
    """Entry of ``pagedllm bench models``: run, print the table, optionally write JSON."""
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    return 0 if report["same_output_tokens"] and not report["errors"] else 1
