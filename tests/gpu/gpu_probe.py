"""Engine checks on a CUDA device against transformers on the same device (issue 19).

1. fp32, tiny random Llama: greedy tokens equal transformers' greedy (4 prompts x 32 tokens).
2. bf16, the random 0.68B Llama: greedy agreement with transformers' bf16 greedy, and top-1
   agreement teacher-forced on pagedllm's own outputs (bf16 rounding makes bit-equality a
   matter of luck; the bound is stated in docs/benchmarks.md).
3. gpu_memory_utilization: the device memory in use after a run stays under the cap.
4. CUDA graphs against enforce_eager=True on the 0.68B model: same greedy tokens, decode time.

    python -P tests/gpu/gpu_probe.py TINY_DIR BIG_DIR OUT_JSON
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared HF oracle
from model_fixtures import hf_greedy  # noqa: E402

DEVICE = os.environ.get("PROBE_DEVICE", "cuda")  # "cpu" rehearses the script where there is no GPU
PROMPTS = ["Hello, my name is", "The president of the United States is", "The capital of France is",
           "The future of AI is"]


def teacher_forced_top1(model, prompt: list[int], tokens: list[int]) -> float:
    """Share of pagedllm's tokens that are transformers' argmax given the same prefix."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens], device=DEVICE)).logits[0]
    pred = logits[len(prompt) - 1:len(prompt) + len(tokens) - 1].argmax(-1).tolist()
    return sum(p == t for p, t in zip(pred, tokens)) / len(tokens)


def parity(path: str, dtype: torch.dtype, n: int, **engine) -> dict:
    from transformers import AutoModelForCausalLM

    from pagedllm import LLM, SamplingParams

    name = str(dtype).removeprefix("torch.")
    if DEVICE == "cpu":
        engine = {"device": "cpu", "kv_cache_memory": 256 << 20}
    llm = LLM(path, dtype=name, **engine)
    tok = llm.get_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    ours = [list(o.outputs[0].token_ids) for o in outs]
    engine_info = {"blocks": llm.llm_engine.block_manager.num_blocks,
                   "backend": llm.llm_engine.runner.backend_cls.name}
    del llm
    _empty_cache()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(DEVICE).eval()
    theirs = [hf_greedy(hf, p, n) for p in prompts]
    forced = [teacher_forced_top1(hf, p, o) for p, o in zip(prompts, ours)]
    # the noise floor: transformers' own incremental greedy against its own full forward
    hf_self = [teacher_forced_top1(hf, p, t) for p, t in zip(prompts, theirs)]
    same_prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), n) for x, y in zip(ours, theirs)]
    del hf
    _empty_cache()
    return {"dtype": name, "exact": ours == theirs, "same_prefix_tokens": same_prefix,
            "teacher_forced_top1": sum(forced) / len(forced),
            "hf_self_teacher_forced_top1": sum(hf_self) / len(hf_self), **engine_info}


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_cap(path: str, utilization: float) -> dict:
    from pagedllm import LLM, SamplingParams

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free0, total = torch.cuda.mem_get_info()
    llm = LLM(path, dtype="bfloat16", gpu_memory_utilization=utilization)
    llm.generate(["Hello"] * 64, SamplingParams(max_tokens=64, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info()
    used_total = total - free1  # every process on the device, as vLLM's cap counts it
    result = {"utilization": utilization, "total_gib": total / 2**30, "used_gib": used_total / 2**30,
              "cap_gib": utilization * total / 2**30, "under_cap": used_total <= utilization * total,
              "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
              "blocks": llm.llm_engine.block_manager.num_blocks, "used_before_gib": (total - free0) / 2**30}
    del llm
    torch.cuda.empty_cache()
    return result


def graphs_vs_eager(path: str, n_prompts: int = 64, n_tokens: int = 128) -> dict:
    """Same greedy tokens with and without CUDA graphs, and the time of a decode-heavy batch."""
    from pagedllm import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True)
    prompts = [PROMPTS[i % 4] + f" ({i})" for i in range(n_prompts)]
    result, tokens = {}, {}
    for label, eager in (("eager", True), ("graphs", False)):
        llm = LLM(path, dtype="bfloat16", enforce_eager=eager, gpu_memory_utilization=0.5)
        llm.generate(prompts[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        result[f"{label}_s"] = round(time.perf_counter() - t0, 3)
        result[f"{label}_graphs_used"] = llm.llm_engine.runner.graphs is not None
        tokens[label] = [list(o.outputs[0].token_ids) for o in outs]
        del llm
        _empty_cache()
    result["same_sequences"] = sum(a == b for a, b in zip(tokens["eager"], tokens["graphs"]))
    result["sequences"] = n_prompts
    result["speedup"] = round(result["eager_s"] / result["graphs_s"], 2)
    return result


def main() -> int:
    tiny, big, out_json = sys.argv[1:4]
    report = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE}
    failures = 0
    checks = [("fp32_tiny", lambda: parity(tiny, torch.float32, 32, gpu_memory_utilization=0.3)),
              ("bf16_big", lambda: parity(big, torch.bfloat16, 32, gpu_memory_utilization=0.5)),
              ("memory_cap", lambda: memory_cap(big, 0.4)),
              ("graphs", lambda: graphs_vs_eager(big))][:4 if DEVICE == "cuda" else 2]
    for name, check in checks:
        t0 = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # keep going: one run of this script must tell as much as it can
            import traceback

            traceback.print_exc()
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            failures += 1
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(report[name]), flush=True)
    with open(out_json, "w") as f:
        json.dump(report, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
