"""Mixed batches (adapters and the base model in one step), prefix-cache separation, slot LRU."""
import torch

from lora_fixtures import PROMPTS, assert_matches_oracle
from model_fixtures import hf_greedy
from pagedllm import LLM, LoRARequest, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _requests(adapters):
    return {name: LoRARequest(name, i + 1, path) for i, (name, (path, _)) in enumerate(sorted(adapters.items()))}


def test_mixed_batch_equals_each_request_alone(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    loras = [None, *_requests(adapters).values()]
    llm = LLM(base, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True, max_loras=3)
    prompts = [PROMPTS[i % 4] + " x" * i for i in range(16)]  # 16 requests, 4 per adapter and 4 for the base
    per_prompt = [loras[(i // 4 + i) % 4] for i in range(16)]
    mixed = llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=per_prompt)
    assert llm.llm_engine.stats.max_batch_size == 16  # all in one step: no per-adapter batches
    for prompt, lora, out in zip(prompts, per_prompt, mixed):
        alone = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=lora)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids, (prompt, lora)
        assert out.lora_request == lora
    by_adapter = {}
    for lora, out in zip(per_prompt, mixed):
        by_adapter.setdefault(None if lora is None else lora.lora_name, []).append(out.outputs[0].token_ids)
    assert len({str(v) for v in by_adapter.values()}) == 4  # every adapter changed its outputs


def test_prefix_cache_never_shares_blocks_across_adapters(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    reqs = _requests(adapters)
    llm = LLM(base, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True, max_loras=2)
    tok = llm.get_tokenizer()
    prompt = PROMPTS[3]  # ~50 tokens: three full blocks could come from the cache
    first_base = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert first_base.num_cached_tokens == 0
    for name in ("attn-r8", "mlp-r4"):
        out = llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=reqs[name])[0]
        assert out.num_cached_tokens == 0, name  # the base model's blocks are not this adapter's
        oracle = adapters[name][1]
        assert out.outputs[0].token_ids == hf_greedy(oracle, tok.encode(prompt), 24)
        again = llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=reqs[name])[0]
        assert again.num_cached_tokens >= 32  # the same adapter does reuse its own blocks
        assert again.outputs[0].token_ids == out.outputs[0].token_ids
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens >= 32


def test_lru_eviction_then_reload_gives_the_same_outputs(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    reqs = _requests(adapters)
    llm = LLM(base, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True, max_loras=1, max_cpu_loras=1,
              enable_prefix_caching=False)
    manager = llm.llm_engine.lora_manager
    order = ["attn-r8", "all-r16", "mlp-r4", "attn-r8", "all-r16"]
    for name in order:  # each one evicts the previous from the one slot and from host memory
        assert_matches_oracle(llm, adapters[name][1], PROMPTS[:2], reqs[name], max_tokens=16)
    assert manager.num_loads == len(order) and manager.num_activations == len(order)
    assert len(manager.loaded) == 1


def test_more_adapters_than_slots_in_one_call_wait_for_a_slot(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    reqs = list(_requests(adapters).values())
    llm = LLM(base, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True, max_loras=2, max_cpu_loras=3)
    tok = llm.get_tokenizer()
    prompts = [PROMPTS[i % 4] for i in range(6)]
    per_prompt = [reqs[i % 3] for i in range(6)]
    outs = llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=per_prompt)
    for prompt, lora, out in zip(prompts, per_prompt, outs):
        oracle = adapters[lora.lora_name][1]
        assert out.outputs[0].token_ids == hf_greedy(oracle, tok.encode(prompt), 24), lora.lora_name
    assert llm.llm_engine.lora_manager.num_activations >= 3


def test_n_samples_share_the_adapter(tiny_llama_adapters):
    """n > 1 forks: every sample runs under the request's adapter (seeded samples equal those run one by one)."""
    base, adapters = tiny_llama_adapters
    lora = _requests(adapters)["all-r16"]
    llm = LLM(base, dtype="float32", kv_cache_memory=64 << 20, enable_lora=True)
    params = SamplingParams(temperature=0, max_tokens=12, n=3, ignore_eos=True)
    out = llm.generate(PROMPTS[1], params, use_tqdm=False, lora_request=lora)[0]
    expected = hf_greedy(adapters["all-r16"][1], llm.get_tokenizer().encode(PROMPTS[1]), 12)
    assert [c.token_ids for c in out.outputs] == [expected] * 3
    with torch.no_grad():
        pass
