"""LoRA test helpers: random PEFT adapters saved as folders, and PEFT's merged model as the oracle.

A uniquely named module (not ``conftest``), as ``model_fixtures``.
"""
from __future__ import annotations

import torch

from model_fixtures import SEED_PROMPTS, hf_greedy, save_random_model  # noqa: F401 - save_random_model re-exported

VOCAB = 49152  # the bundled tokenizer's vocabulary
PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]  # 6..~50 tokens, crossing blocks


def make_peft_adapter(base_path, out_dir, target_modules, *, r: int = 8, alpha: float = 16, seed: int = 0,
                      std: float = 0.1, use_rslora: bool = False, **lora_kwargs):
    """Save a PEFT LoRA adapter with random (non-zero) A and B for the model at ``base_path``; return
    PEFT's ``merge_and_unload`` model (float32, eval): the oracle for that adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        init_lora_weights=False, use_rslora=use_rslora, **lora_kwargs)
    peft_model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, std)
    peft_model.save_pretrained(str(out_dir))
    return peft_model.merge_and_unload().eval()


def assert_matches_oracle(llm, oracle, prompts, lora_request, max_tokens: int = 32):
    """Greedy tokens equal the oracle's generate; prompt logprobs within 1e-4 of its log-softmax."""
    from pagedllm import SamplingParams

    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request)
    for prompt, out in zip(prompts, outs):
        ids = tok.encode(prompt)
        assert out.lora_request == lora_request
        assert out.outputs[0].token_ids == hf_greedy(oracle, ids, max_tokens), prompt
        with torch.no_grad():
            ref = torch.log_softmax(oracle(torch.tensor([ids])).logits[0].float(), dim=-1)
        got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))])
        want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    return outs
