"""Greedy output must be token-for-token identical to Hugging Face transformers (float32)."""
import pytest
import torch

from model_fixtures import SEED_PROMPTS, hf_greedy, make_tiny_model
from pagedllm import LLM, SamplingParams


def test_bundled_smollm2_matches_transformers(bundled_llm_fp32, hf_bundled_fp32):
    llm = bundled_llm_fp32
    tok = llm.get_tokenizer()
    eos = list(llm.llm_engine.eos_token_ids)
    outs = llm.generate(SEED_PROMPTS, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)
    for prompt, out in zip(SEED_PROMPTS, outs):
        expected = hf_greedy(hf_bundled_fp32, tok.encode(prompt), 64, eos_token_id=eos)
        assert out.outputs[0].token_ids == expected, prompt
        assert out.outputs[0].text == tok.decode(expected, skip_special_tokens=True)
        assert out.prompt == prompt and out.prompt_token_ids == tok.encode(prompt)
        assert out.finished and out.outputs[0].finish_reason in ("stop", "length")


TINY_CONFIGS = {
    "llama-gqa-untied": ("llama", {}),
    "llama-mha-tied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "llama-mqa-bias": ("llama", {"num_key_value_heads": 1, "attention_bias": True}),
    "llama3-rope-scaling": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                      "rope_theta": 500000.0}),
    "qwen2-qkv-bias": ("qwen2", {"tie_word_embeddings": True}),
    "mistral": ("mistral", {"sliding_window": None}),
}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_random_models_match_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM

    arch, overrides = TINY_CONFIGS[name]
    path = make_tiny_model(tmp_path / name, arch, **overrides)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, dtype="float32", kv_cache_memory=64 << 20, block_size=16)
    tok = llm.get_tokenizer()
    # Prompts of different lengths crossing block boundaries; one batch through the engine.
    prompts = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        expected = hf_greedy(hf, tok.encode(prompt), 32, eos_token_id=None)
        assert out.outputs[0].token_ids == expected, (name, prompt)
