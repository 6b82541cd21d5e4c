"""Tensor parallelism over local processes (``mp`` executor, gloo on CPU): TP=2 generates what TP=1
generates on tiny fp32 models of several architectures, each rank holds half the sharded weights,
and no worker process outlives its engine.

The fast case (one tiny Llama, a few tokens) runs in the default suite; the per-architecture cases
start several multi-process engines and are ``slow``. TP=1 in the same process is the oracle for
TP=2 (itself checked against transformers by ``tests/models``).
"""
from __future__ import annotations

import gc
import os

import pytest
import torch

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM
from tensor_parallel_helpers import (TWO_CORES, assert_flat_decode_is_the_modules, assert_same_generation,
                                     child_pids, run, save_model)

pytestmark = pytest.mark.skipif(not TWO_CORES, reason="tensor_parallel_size=2 needs 2 CPU cores")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tp-llama"), "llama")  # 4 heads, 2 KV heads


def test_tp2_matches_tp1_and_halves_the_weights(tiny_llama):
    prompts = SEED_PROMPTS[:2]
    ref, (rank0,) = run(tiny_llama, 1, prompts, 6, prompt_logprobs=1)
    got, ranks = run(tiny_llama, 2, prompts, 6, prompt_logprobs=1)
    assert_same_generation(ref, got)
    # every weight of this model is sharded (vocab, heads, MLP) except the norms: half each, to the byte
    norms = sum(p.numel() * 4 for n, p in _hf_norms(tiny_llama))
    assert [r["param_bytes"] for r in ranks] == [(rank0["param_bytes"] - norms) // 2 + norms] * 2
    assert all(r["all_reduced_bytes"] > 0 for r in ranks)
    assert [r["cpu_decode"] for r in ranks] == [True, True]  # decode steps: each rank's flat plan, below
    gc.collect()
    assert child_pids() == []


def test_tp2_flat_decode_is_the_modules_bit_for_bit(tiny_llama):
    """A TP rank's decode steps run its shards as a flat run of kernel calls (``LlamaCpuDecode``, all-reducing
    the row-parallel o and down products as their modules do); ``enforce_eager=True`` runs the modules on
    every rank: same tokens, every logprob equal to the bit."""
    assert_flat_decode_is_the_modules(tiny_llama, 2, [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))])
    gc.collect()
    assert child_pids() == []


def _hf_norms(path):
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        return [(n, f.get_tensor(n)) for n in f.keys() if "norm" in n]


def _configs():
    import transformers as hf
    from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config

    common = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    small = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2)  # each family's own defaults otherwise
    falcon = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, **small)
    gemma = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, **small)
    return {
        "gpt2": hf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **small),
        "opt": hf.OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                            max_position_embeddings=256, pad_token_id=0, **small),
        "gptj": hf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, **small),
        "falcon-multi-query": hf.FalconConfig(**falcon),
        "falcon-new-arch-grouped": hf.FalconConfig(new_decoder_architecture=True, num_kv_heads=2, **falcon),
        "falcon-rw-alibi": hf.FalconConfig(alibi=True, multi_query=False, parallel_attn=False, bias=True, **falcon),
        "phi": hf.PhiConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                            max_position_embeddings=256, partial_rotary_factor=0.5, **small),
        "phi3": hf.Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, **small),
        "qwen3": hf.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                                tie_word_embeddings=True, **small),
        "gemma": hf.GemmaConfig(**gemma),
        "gemma2-softcap-window": hf.Gemma2Config(sliding_window=16, query_pre_attn_scalar=24,
                                                 attn_logit_softcapping=5.0, final_logit_softcapping=3.0, **gemma),
        "llama-gqa": LlamaConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common),
        "llama-mqa": LlamaConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, **common),
        "qwen2-bias-tied": Qwen2Config(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                       **{**common, "tie_word_embeddings": True}),
        "mistral": MistralConfig(intermediate_size=128, num_attention_heads=8, num_key_value_heads=2,
                                 sliding_window=None, **common),
        "mixtral-moe": MixtralConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     num_local_experts=4, num_experts_per_tok=2, sliding_window=None, **common),
        "gpt-neox-parallel-residual": GPTNeoXConfig(intermediate_size=128, num_attention_heads=4, rotary_pct=0.25,
                                                    use_parallel_residual=True, **common),
    }


ARCHITECTURES = ["llama-gqa", "llama-mqa", "qwen2-bias-tied", "mistral", "mixtral-moe", "gpt-neox-parallel-residual",
                 "gpt2", "opt", "gptj", "falcon-multi-query", "falcon-new-arch-grouped", "falcon-rw-alibi", "phi",
                 "phi3", "qwen3", "gemma", "gemma2-softcap-window"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_tp2_matches_tp1_per_architecture(name, tmp_path):
    """32 tokens x 4 prompts, greedy, with prompt logprobs (the LM head's gather on every rank). Every
    native decoder family with a transformers config class; Baichuan and ChatGLM (remote-code configs) are
    not covered here."""
    path = save_model(tmp_path, _configs()[name])
    prompts = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]  # up to ~50 tokens: several blocks
    ref, (rank0,) = run(path, 1, prompts, 32, prompt_logprobs=2)
    got, ranks = run(path, 2, prompts, 32, prompt_logprobs=2)
    worst = assert_same_generation(ref, got)
    print(f"{name}: max logprob difference {worst:.2e}; bytes per rank {ranks[0]['param_bytes']} of "
          f"{rank0['param_bytes']}")
    # the replicated parts (norms, MoE router, MQA's one KV head) are small: each rank holds ~half
    assert all(r["param_bytes"] < 0.56 * rank0["param_bytes"] for r in ranks), (ranks, rank0)
    gc.collect()
    assert child_pids() == []


def test_heads_that_do_not_divide_are_refused_before_any_process_starts(tmp_path):
    path = make_tiny_model(tmp_path, "llama", num_attention_heads=2, num_key_value_heads=1, hidden_size=64)
    with pytest.raises(ValueError, match="tensor_parallel_size=4 does not divide the model's num_attention_heads=2"):
        LLM(path, tensor_parallel_size=4, dtype="float32")
    assert child_pids() == []


def test_more_ranks_than_cores_fail_fast_naming_what_is_missing(tiny_llama):
    from pagedllm.engine.mp_executor import check_placeable

    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=rf"tensor_parallel_size={cores + 1} needs {cores + 1} CPU cores"):
        check_placeable(cores + 1, torch.device("cpu"))
    if cores < 4:  # the tiny model's 4 heads split over 4 ranks, but this machine has fewer cores
        with pytest.raises(ValueError, match=rf"tensor_parallel_size=4 needs 4 CPU cores, one per rank; this "
                                             rf"process may use {cores}"):
            LLM(tiny_llama, tensor_parallel_size=4, dtype="float32")
    assert child_pids() == []


@pytest.mark.parametrize("config,tp,message", [
    (dict(num_attention_heads=9, num_key_value_heads=3), 2, "num_attention_heads=9"),  # the bundled SmolLM2's
    (dict(num_attention_heads=12, num_key_value_heads=3), 2, "num_key_value_heads=3"),
    (dict(num_attention_heads=8, new_decoder_architecture=True, num_kv_heads=3), 2, "num_key_value_heads=3"),
    (dict(num_attention_heads=8, num_key_value_heads=2), 4, None),  # replicated KV heads
    (dict(num_attention_heads=8, multi_query=True), 8, None),
    (dict(num_attention_heads=9, num_key_value_heads=3), 3, None),
    (dict(num_attention_heads=12, num_key_value_heads=4), 3, "num_key_value_heads=4.*use one of 1, 2, 4, 12"),
])
def test_head_rules(config, tp, message):
    from types import SimpleNamespace

    from pagedllm.distributed import check_tensor_parallel

    if message is None:
        check_tensor_parallel(SimpleNamespace(**config), tp)
        return
    with pytest.raises(ValueError, match=rf"tensor_parallel_size={tp}.*{message}"):
        check_tensor_parallel(SimpleNamespace(**config), tp)


def test_tensor_parallel_sizes_split_query_and_kv_heads():
    from pagedllm.distributed import tensor_parallel_sizes

    assert tensor_parallel_sizes(9, 3) == [1, 3, 9]  # the bundled SmolLM2: 3 KV heads, replicated at 9
    assert tensor_parallel_sizes(8, 2) == [1, 2, 4, 8]
    assert tensor_parallel_sizes(32, 8) == [1, 2, 4, 8, 16, 32]
    assert tensor_parallel_sizes(12, 8) == [1, 2, 4]  # 3, 6 and 12 neither divide 8 nor are divided by it


def test_the_bundled_model_at_tp2_is_refused_naming_its_heads_and_the_sizes_that_split_them():
    """SmolLM2-135M has 9 query heads and 3 KV heads: 2 ranks cannot split it; 3 (or 9) can."""
    from model_fixtures import BUNDLED

    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 does not divide the model's num_attention_heads=9 "
                                         r"\(num_key_value_heads=3\).*one of 1, 3, 9$"):
        LLM(BUNDLED, tensor_parallel_size=2, dequantize_gguf=True)  # dense: a quantized GGUF is refused at TP
    assert child_pids() == []


@pytest.mark.slow
def test_the_bundled_model_at_tp3_matches_tp1(monkeypatch):
    """The bundled SmolLM2-135M (dense) split over 3 ranks (3 query heads and 1 KV head each) generates what
    TP=1 generates: 32 greedy tokens x 4 prompts, logprobs within 1e-4. The machine has 2 cores: the 3 ranks
    (one torch thread each) share them, which the start-up check refuses for speed's sake, so the test lifts it."""
    from model_fixtures import BUNDLED
    from pagedllm import SamplingParams
    from pagedllm.engine import mp_executor

    prompts = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=1, prompt_logprobs=1)
    engine = dict(dtype="float32", dequantize_gguf=True, kv_cache_memory=64 << 20, max_model_len=512)
    outputs = {}
    for tp in (1, 3):
        if tp == 3:
            monkeypatch.setattr(mp_executor, "available_cores", lambda: 3)
        llm = LLM(BUNDLED, tensor_parallel_size=tp, **engine)
        outputs[tp] = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.llm_engine.executor.stats()
        llm.llm_engine.shutdown()
        del llm
    assert len(stats) == 3 and all(r["all_reduced_bytes"] > 0 for r in stats)
    worst = assert_same_generation(outputs[1], outputs[3])
    print(f"bundled model TP=3 vs TP=1: max logprob difference {worst:.2e}")
    gc.collect()
    assert child_pids() == []


@pytest.mark.slow
@pytest.mark.parametrize("source", ["quantized_at_load", "fp8_checkpoint", "mixtral_quantized_at_load"])
def test_tp2_fp8_weights_match_tp1(tiny_llama, tmp_path, source):
    """fp8 weights shard with their per-channel scales: a row-parallel rank (and an MoE down projection)
    scales its slice by the whole row's amax (online), a per-tensor checkpoint scale fills its shard's rows,
    so TP=2 runs the weights TP=1 runs and generates the same."""
    from fp8_files import write_fp8

    path, engine = tiny_llama, dict(quantization="fp8")
    if source == "mixtral_quantized_at_load":
        path = save_model(tmp_path, _configs()["mixtral-moe"])
    if source == "fp8_checkpoint":
        path, _ = write_fp8(tiny_llama, tmp_path / "fp8", tmp_path / "dense", per="tensor")
        engine = {}
    prompts = SEED_PROMPTS[:2]
    ref, _ = run(path, 1, prompts, 6, prompt_logprobs=1, **engine)
    got, ranks = run(path, 2, prompts, 6, prompt_logprobs=1, **engine)
    assert_same_generation(ref, got)
    gc.collect()
    assert child_pids() == []
