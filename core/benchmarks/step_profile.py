"""``pagedllm bench step``: where a single-stream decode step's time goes (issue 22).

Wraps the engine's parts with wall-clock timers (exclusive time: a part's children are subtracted)
and decodes one request; only the steps that decoded (no prompt token) are counted, so the figures
are the decode step alone. Parts: the weight kernels (``GGUFWeight.matmul`` or the dense
``F.linear`` under each linear layer), the LM head, attention, norms/rotary/activation, the Python
around each layer and linear call, the step's input tensors, sampling, detokenizing and the
engine's bookkeeping. Where decode steps run as flat kernel calls (``models/llama_cpu_decode.py``, the
default for Llama-family models on CPU) the layers are one part, or two (the C call of
``kernels/cpu_decode_layers`` for GGUF weights); ``--enforce-eager`` profiles the modules part by part.
Fractions are reported besides milliseconds: on a loaded machine the milliseconds move, the shares much
less. The timers add about a microsecond per wrapped call.
"""
from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict

from pagedllm.entrypoints.cli_args import add_engine_args, engine_kwargs

# module class name -> part; the first that matches an instance's MRO wins
MODULE_PARTS = (
    ("LinearBase", "linear layers: Python around the kernel"),
    ("Attention", "attention: KV write + paged attention"),
    ("QKVAttention", "attention block: split/reshape glue"),
    ("RotaryEmbedding", "rotary embedding"),
    ("RMSNorm", "norms"),
    ("LayerNorm", "norms"),
    ("ActAndMul", "activation"),
    ("GGUFEmbedding", "embedding lookup"),
    ("VocabParallelEmbedding", "embedding lookup"),
)
LAYER_PART = "decoder layers: Python per layer"
C_LAYERS_PART = "decoder layers as one C call (kernels/cpu_decode_layers: weights, attention, norms)"
FLAT_PART = "decode step outside the layers (models/llama_cpu_decode)"
MODEL_PART = "model forward: Python outside the layers"
KERNEL_PART = "weight kernels (linear layers)"
HEAD_KERNEL_PART = "weight kernel (LM head)"


class StepTimer:
    """Exclusive wall time per part: each timed call's time, less the timed calls made inside it."""

    def __init__(self):
        self.exclusive = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack: list[list] = []  # [part, child seconds]

    def wrap(self, fn, part: str | None = None, part_of=None):
        """``fn`` timed under ``part`` (or ``part_of(stack)``'s answer, decided per call)."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = part if part_of is None else part_of(self._stack)
            frame = [name, 0.0]
            self._stack.append(frame)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self._stack.pop()
                self.exclusive[name] += elapsed - frame[1]
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][1] += elapsed
        return timed

    def snapshot(self) -> dict:
        return dict(self.exclusive)


def _kernel_part(stack) -> str:
    return HEAD_KERNEL_PART if any(f[0] == "LM head: Python" for f in stack) else KERNEL_PART


def instrument(llm, timer: StepTimer) -> None:
    """Wrap the engine's, runner's and model's parts of ``llm`` (one process, rank 0)."""
    import torch.nn.functional as F

    from pagedllm.kernels import cpu_gemm
    from pagedllm.quantization import gguf_weight
    from pagedllm.worker import sampler as sampler_mod

    engine = llm.llm_engine
    runner = engine.runner
    engine.step = timer.wrap(engine.step, "engine step: bookkeeping")
    engine.scheduler.schedule = timer.wrap(engine.scheduler.schedule, "scheduler")
    runner.execute = timer.wrap(runner.execute, "runner: Python around the model")
    runner._build_metadata = timer.wrap(runner._build_metadata, "per-step input tensors (metadata)")
    runner._logits = timer.wrap(runner._logits, "LM head: Python")
    runner.sampler = timer.wrap(runner.sampler, "sampling")
    proc = engine.output_processor
    proc.process_token = timer.wrap(proc.process_token, "detokenize + stop checks")
    proc.make_outputs = timer.wrap(proc.make_outputs, "request outputs")
    build = sampler_mod.SamplingBatch.build
    sampler_mod.SamplingBatch.build = classmethod(timer.wrap(build.__func__, "sampling: per-step batch tensors"))
    model = runner.model
    model.forward = timer.wrap(model.forward, MODEL_PART)
    plan = runner.cpu_decode  # decode steps as flat kernel calls (off with --enforce-eager: the modules' parts)
    if plan is not None:
        plan.run = timer.wrap(plan.run, FLAT_PART)
        if plan.in_c is not None:
            plan.in_c.run = timer.wrap(plan.in_c.run, C_LAYERS_PART)
    for module in model.modules():
        names = [c.__name__ for c in type(module).__mro__]
        if type(module).__name__.endswith("DecoderLayer"):
            module.forward = timer.wrap(module.forward, LAYER_PART)
            continue
        for cls_name, part in MODULE_PARTS:
            if cls_name in names:
                module.forward = timer.wrap(module.forward, part)
                break
    matmul = gguf_weight.GGUFWeight.matmul
    gguf_weight.GGUFWeight.matmul = timer.wrap(matmul, part_of=_kernel_part)
    linear = F.linear  # the dense path's kernels: F.linear, or oneDNN's on weights packed for bf16 (cpu_gemm)
    F.linear = timer.wrap(linear, part_of=_kernel_part)
    packed = cpu_gemm.linear
    cpu_gemm.linear = timer.wrap(packed, part_of=_kernel_part)
    llm._profile_restore = lambda: (setattr(gguf_weight.GGUFWeight, "matmul", matmul),
                                    setattr(sampler_mod.SamplingBatch, "build", build), setattr(F, "linear", linear),
                                    setattr(cpu_gemm, "linear", packed))


def profile_decode(llm, prompt_ids: list[int], new_tokens: int, repetitions: int) -> dict:
    """ms per decode step per part, over the steps that only decoded (the prefill steps left out)."""
    from pagedllm import SamplingParams

    timer = StepTimer()
    instrument(llm, timer)
    engine = llm.llm_engine
    timed_step = engine.step
    decode: dict = defaultdict(float)
    totals = {"steps": 0, "wall_s": 0.0}

    def step():
        before, prompt_tokens = timer.snapshot(), engine.stats.prompt_tokens
        t0 = time.perf_counter()
        out = timed_step()
        elapsed = time.perf_counter() - t0
        if engine.stats.prompt_tokens == prompt_tokens and totals["on"]:  # no prompt token: a decode step
            for k, v in timer.exclusive.items():
                decode[k] += v - before.get(k, 0.0)
            totals["steps"] += 1
            totals["wall_s"] += elapsed
        return out

    engine.step = step
    params = SamplingParams(temperature=0.0, max_tokens=1 + new_tokens, ignore_eos=True)
    try:
        for on in (False, True):  # a warm-up run, then the timed ones
            totals["on"] = on
            for _ in range(repetitions if on else 1):
                engine.block_manager.reset_prefix_cache()
                llm.generate([prompt_ids], params, use_tqdm=False)
    finally:
        llm._profile_restore()
        del engine.step
    steps = totals["steps"]
    parts = {k: v * 1000 / steps for k, v in decode.items()}
    parts["timers and step wrapper"] = totals["wall_s"] * 1000 / steps - sum(parts.values())
    return {"step_ms": totals["wall_s"] * 1000 / steps, "decode_steps": steps,
            "parts_ms": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
            "new_tokens": new_tokens, "repetitions": repetitions}


def format_profile(result: dict, title: str) -> str:
    total = result["step_ms"]
    lines = [f"{title}: {total:.2f} ms per decode step ({1000 / total:.1f} tok/s)",
             "| part | ms/step | share |", "|---|---:|---:|"]
    for part, ms in result["parts_ms"].items():
        lines.append(f"| {part} | {ms:.3f} | {ms / total:.1%} |")
    weights = result["parts_ms"].get(KERNEL_PART, 0) + result["parts_ms"].get(HEAD_KERNEL_PART, 0)
    lines.append(f"weight kernels (layers + LM head): {weights / total:.1%} of the step; the rest "
                 f"{(total - weights):.2f} ms")
    return "\n".join(lines)


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=64, help="decode steps timed per run (default: %(default)s)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs of each length (default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the breakdown to this JSON file")
    add_engine_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from pagedllm import LLM
    from pagedllm.benchmarks.llamacpp import single_stream_prompt
    from pagedllm.benchmarks.report import load_avg, write_json

    for name in ("prompt_len", "new_tokens", "repetitions"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    load_before = load_avg()
    llm = LLM(**engine_kwargs(args))
    prompt = single_stream_prompt(llm.get_tokenizer(), args.prompt_len)
    result = profile_decode(llm, prompt, args.new_tokens, args.repetitions)
    path = "dense (--dequantize-gguf)" if args.dequantize_gguf else "default"
    print(format_profile(result, f"{args.model}, {path}, {llm.llm_engine.dtype}"))
    write_json({**result, "model": args.model, "dequantize_gguf": args.dequantize_gguf,
                "load_avg_1m": [load_before, load_avg()]}, args.output_json)
    return 0
