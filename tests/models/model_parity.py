"""Parity harness for the model families: a tiny random HF model saved as safetensors, run through
the engine (one batch, float32) and through transformers (the oracle)."""
from __future__ import annotations

import torch

from model_fixtures import SEED_PROMPTS, bundled_path, hf_greedy

VOCAB = 49152  # the bundled tokenizer's vocabulary
PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]  # 6..~50 tokens, crossing blocks


def save_random_model(path, config, seed: int = 0, tweak=None):
    """Build ``config``'s HF model with larger random weights, save it (+ tokenizer); return it (eval, eager)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config._attn_implementation = "eager"  # the reference implementation (soft-capping, windows)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger than the init default, so logits are not flat; biases/norms not trivial
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
            elif "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 0.05)
        if tweak is not None:
            tweak(model)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(path)
    return model.eval()


def assert_parity(path, hf, prompts=PROMPTS, max_tokens: int = 32, **llm_kwargs):
    """Greedy tokens identical to transformers' generate; prompt logprobs within 1e-4 of its logits."""
    from pagedllm import LLM, SamplingParams

    llm = LLM(str(path), dtype="float32", kv_cache_memory=32 << 20, block_size=16, **llm_kwargs)
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == hf_greedy(hf, ids, max_tokens), prompt
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))])
        want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    return llm
