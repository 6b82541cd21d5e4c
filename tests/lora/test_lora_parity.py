"""Adapters run by pagedllm equal PEFT's merged model in transformers (fp32): greedy tokens and logprobs.

Random adapters made here with ``peft`` on tiny models of three native architectures (Llama, whose block
also serves Mistral/Qwen2; GPT-NeoX with its checkpoint-fused per-head q|k|v; OPT) and on the bundled
model. Each test also shows the adapter changes the output, so a LoRA path that did nothing would fail.
"""
import pytest
import torch

from lora_fixtures import PROMPTS, VOCAB, assert_matches_oracle, make_peft_adapter, save_random_model
from model_fixtures import make_tiny_model
from pagedllm import LLM, LoRARequest, SamplingParams

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny(arch, path):
    if arch == "llama":
        return make_tiny_model(path, "llama"), LLAMA_TARGETS
    if arch == "qwen2":
        return make_tiny_model(path, "qwen2"), ["q_proj", "v_proj", "down_proj"]
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                               num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.25,
                               bos_token_id=1, eos_token_id=2, architectures=["GPTNeoXForCausalLM"])
        save_random_model(path, config)
        return str(path), ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       architectures=["OPTForCausalLM"])
    save_random_model(path, config)
    return str(path), ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


CASES = {  # arch, rank, alpha, rsLoRA
    "llama-r8": ("llama", 8, 16, False),
    "qwen2-r4-rslora": ("qwen2", 4, 8, True),
    "gpt_neox-r16": ("gpt_neox", 16, 32, False),
    "opt-r8-rslora": ("opt", 8, 16, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_models_match_peft_merged(case, tmp_path):
    arch, r, alpha, rslora = CASES[case]
    base, targets = _tiny(arch, tmp_path / "base")
    oracle = make_peft_adapter(base, tmp_path / "adapter", targets, r=r, alpha=alpha, use_rslora=rslora)
    llm = LLM(base, dtype="float32", kv_cache_memory=32 << 20, enable_lora=True, max_lora_rank=16)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))
    outs = assert_matches_oracle(llm, oracle, PROMPTS, lora)
    base_outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] != [o.outputs[0].token_ids for o in base_outs]


@pytest.mark.slow  # ~80 s on 2 cores: transformers' generate on the 135M model is the oracle
def test_bundled_model_matches_peft_merged(bundled_model_path, tmp_path):
    oracle = make_peft_adapter(bundled_model_path, tmp_path / "adapter", LLAMA_TARGETS, r=16, alpha=32, std=0.05)
    llm = LLM(bundled_model_path, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True)
    prompts = PROMPTS
    lora = LoRARequest("bundled-lora", 7, str(tmp_path / "adapter"))
    outs = assert_matches_oracle(llm, oracle, prompts, lora)
    base = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] != [o.outputs[0].token_ids for o in base]
