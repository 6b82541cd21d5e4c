"""Each prompt's greedy tokens must not depend on what else runs: batch, prefix cache, preemption."""
import pytest
import torch

from model_fixtures import BUNDLED, SEED_PROMPTS, bundled_path
from pagedllm import LLM, SamplingParams

MAX_TOKENS = 24


def mixed_prompts(n: int = 16) -> list[str]:
    """Mixed lengths (about 5 to 150 tokens), sharing prefixes so the prefix cache has work."""
    prompts = []
    for i in range(n):
        base = SEED_PROMPTS[i % 4]
        prompts.append((f"Story {i}: " + "Once upon a time, in a land far away, " * (i % 7)) + base)
    return prompts


@pytest.fixture(scope="module")
def alone(bundled_llm_fp32):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [bundled_llm_fp32.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for p in mixed_prompts()]


def test_batch_equals_alone_and_prefix_cache_hits(bundled_llm_fp32, alone):
    llm = bundled_llm_fp32
    bm = llm.llm_engine.block_manager
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    batch = llm.generate(mixed_prompts(), params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in batch] == alone
    # Same prompts again: their full blocks are now cached.
    hits_before = bm.prefix_hits
    again = llm.generate(mixed_prompts(), params, use_tqdm=False)
    assert bm.prefix_hits > hits_before
    assert sum(o.num_cached_tokens for o in again) > 0
    assert [o.outputs[0].token_ids for o in again] == alone
    assert bm.num_free_blocks == bm.num_blocks  # no leak


def test_batch_equals_alone_under_preemption(alone):
    # 48 blocks hold far less than 16 running sequences; the block size comes from the model's shapes.
    from transformers import AutoConfig

    from pagedllm.worker.cache_engine import bytes_per_block

    cfg = AutoConfig.from_pretrained(bundled_path())
    per_block = bytes_per_block(cfg.num_hidden_layers, 16, cfg.num_key_value_heads,
                                cfg.hidden_size // cfg.num_attention_heads, torch.float32)
    llm = LLM(BUNDLED, dtype="float32", kv_cache_memory=48 * per_block, max_num_batched_tokens=256, seed=0,
              dequantize_gguf=True)  # the same weights as `alone` (the dense fixture)
    engine = llm.llm_engine
    assert engine.block_manager.num_blocks == 48
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(mixed_prompts(), params, use_tqdm=False)
    assert engine.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == alone
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
