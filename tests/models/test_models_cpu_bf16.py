"""bf16 on CPU with every fast path (oneDNN-packed weights where the CPU has native bf16, the C
layer ops, the C decode kernel) against transformers in float32 on the bundled model: as close
as the engine's plain torch path is.

bf16 results move with any change in the order of float32 sums, so neither path equals a
reference bit for bit; the plain path's distance to the float32 model is the yardstick the fast
one must keep. (A bf16 transformers run is no oracle here: the plain path runs the very same
torch ops and so sits at ~0 from it on CPUs without native bf16, a bound no other order meets.)
"""
import torch

from model_fixtures import SEED_PROMPTS, bundled_path

from pagedllm.kernels import cpu_build

PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]


def _prompt_logprob_errors(path, hf) -> list[torch.Tensor]:
    from pagedllm import LLM, SamplingParams

    llm = LLM(path, dtype="bfloat16", kv_cache_memory=32 << 20)
    tok = llm.get_tokenizer()
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    errors = []
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))])
        errors.append((got - ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]).abs())
    return errors


def test_cpu_fast_paths_keep_bf16_as_close_to_transformers_as_the_torch_path(monkeypatch):
    from transformers import AutoModelForCausalLM

    from pagedllm.kernels import cpu_decode, cpu_gemm, cpu_ops

    path = bundled_path()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # oneDNN's bf16 packing needs AVX512-BF16/AMX; on other CPUs the fast path is the C kernels alone
    assert cpu_ops.load() is not None and cpu_decode.load() is not None
    fast = _prompt_logprob_errors(path, hf)
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    monkeypatch.setenv("PAGEDLLM_CPU_PREPACK", "0")
    assert not cpu_gemm.available() and cpu_ops.load() is None
    plain = _prompt_logprob_errors(path, hf)
    for f, p in zip(fast, plain):
        assert float(f.mean()) <= 1.5 * float(p.mean()) + 0.01, (f.mean(), p.mean())
        assert float(f.max()) <= 0.3, f.max()
