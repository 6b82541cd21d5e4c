"""The bundled Q4_1 model on its default decode path (activations as 8-bit codes plus 8-bit codes of their
rounding errors, integer dot products: kernels/cpu_q8.h) against the same file dequantized to dense float32.

Rounded activations make token-for-token equality impossible to promise, so issue 22's criterion for them
applies: top-1 agreement >= 99% over >= 512 teacher-forced positions and the prompt tokens' logprobs within
a stated bound. The 8-bit kernel takes decode-only steps of few rows; here ``decode_step`` and ``SMALL_BATCH``
are patched so that every prompt row goes through it too: the numerics of every decode step, at 547 positions
in one run."""
import pytest

from model_fixtures import BUNDLED
from pagedllm import LLM, SamplingParams
from pagedllm.quantization import gguf_weight
from test_gguf_bundled import PROMPTS, TEACHER_FORCED


def _teacher_forced(llm):
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    return [(next(t for t, v in lp.items() if v.rank == 1), lp[tok].logprob)
            for o in llm.generate([p * 5 for p in TEACHER_FORCED], params, use_tqdm=False)
            for tok, lp in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])]


@pytest.mark.slow  # the bundled model quantized next to the dense float32 one; 547 positions
def test_teacher_forced_top1_and_logprobs_against_the_dense_model(monkeypatch, bundled_llm_fp32):
    """Issue 22's bound: >= 99% top-1. Measured on the AMX Xeon: 100% (547 of 547), mean |logprob difference|
    0.0003, and the 4 x 32 greedy continuations of test_gguf_bundled.py equal. With llama.cpp's single 8-bit
    code per activation it was 98.9% and 0.030 (6 positions differed; dense bf16 agrees 98.9% with float32)."""
    monkeypatch.setattr(gguf_weight, "SMALL_BATCH", 1 << 30)
    monkeypatch.setattr(gguf_weight, "decode_step", lambda: True)
    assert gguf_weight.Q8_ACTIVATIONS
    q8 = LLM(BUNDLED, dtype="float32", kv_cache_memory=128 << 20, seed=0)
    quantized, dense = _teacher_forced(q8), _teacher_forced(bundled_llm_fp32)
    assert len(quantized) == len(dense) >= 512
    agree = sum(q[0] == d[0] for q, d in zip(quantized, dense)) / len(dense)
    mean_diff = sum(abs(q[1] - d[1]) for q, d in zip(quantized, dense)) / len(dense)
    print(f"top-1 agreement {agree:.4f}, mean |logprob difference| {mean_diff:.4f} over {len(dense)} positions")
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in q8.generate(PROMPTS, params, use_tqdm=False)]
    want = [o.outputs[0].token_ids for o in bundled_llm_fp32.generate(PROMPTS, params, use_tqdm=False)]
    print("greedy 4 x 32 tokens equal:", [g == w for g, w in zip(got, want)])
    assert agree >= 0.99 and mean_diff < 0.005, (agree, mean_diff)
