"""Pipeline parallelism over local processes (``mp`` executor, gloo on CPU): PP=2 and TP=2 x PP=2 generate
what TP=1 generates (greedy tokens; logprobs within 1e-4) on tiny fp32 models of several architectures
and on the bundled model; each stage holds only its layers (the embedding on the first, the final norm
and LM head on the last); the stages share the cores (cores // TP threads a rank) and their decode steps take
the flat CPU plan, bit for bit the modules'; a killed stage fails the requests naming the rank and leaves no
process.

TP=1 in the same process is the oracle (itself checked against transformers by ``tests/models``). The
fast case (a 3-layer Llama over 2 stages, prompt logprobs included) runs in the default suite; the
others start several multi-process engines and are ``slow``. TP=2 x PP=2 is 4 ranks on 2 cores: the two
stages take turns, each TP rank with one thread.
"""
from __future__ import annotations

import gc
import os
import re
import signal
import threading
import time

import pytest

from model_fixtures import SEED_PROMPTS, bundled_path, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.engine.executor import WorkerDiedError
from tensor_parallel_helpers import (TWO_CORES, assert_flat_decode_is_the_modules, assert_same_generation,
                                     child_pids, run, save_model)

pytestmark = pytest.mark.skipif(not TWO_CORES, reason="pipeline_parallel_size=2 needs 2 CPU cores")
LONG_PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]  # up to ~50 tokens: several blocks


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):  # 3 layers: vLLM's split gives the first stage 2, the last 1
    return make_tiny_model(tmp_path_factory.mktemp("pp-llama"), "llama", num_hidden_layers=3)


def stage_bytes(path: str, stages: int, tied: bool) -> list[int]:
    """Bytes of the checkpoint each stage should hold, from the safetensors names alone (the oracle):
    layer ``i``'s tensors where vLLM's split puts layer ``i``, the input embedding on the first stage,
    every other tensor (final norm, LM head) on the last, and a tied head's copy of the embedding there."""
    import json

    from safetensors import safe_open

    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    layers = config.get("num_hidden_layers") or config["n_layer"]
    per = [layers // stages] * stages
    for i in range(2, layers % stages + 2):  # written out from vLLM's get_pp_indices
        per[-i] += 1
    owner = [s for s, n in enumerate(per) for _ in range(n)]
    out = [0] * stages
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            size = t.numel() * t.element_size()
            found = re.search(r"\.(\d+)\.", name)
            if found:
                out[owner[int(found.group(1))]] += size
            elif re.search(r"embed_tokens|embed_in|wte|word_embeddings", name):
                out[0] += size
                out[-1] += size if tied and "lm_head.weight" not in f.keys() else 0
            else:
                out[-1] += size
    return out


def test_pp2_matches_tp1_and_each_stage_holds_its_layers(tiny_llama, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_PP_MICROBATCHES", "2")  # two in flight even in these small steps
    ref, (rank0,) = run(tiny_llama, 1, LONG_PROMPTS[:3], 6, prompt_logprobs=1)
    got, stages = run(tiny_llama, 1, LONG_PROMPTS[:3], 6, prompt_logprobs=1, pipeline_parallel_size=2)
    assert_same_generation(ref, got)
    assert [s["param_bytes"] for s in stages] == stage_bytes(tiny_llama, 2, tied=False)
    assert sum(s["param_bytes"] for s in stages) == rank0["param_bytes"]
    assert stages[0]["sent_bytes"] > 0 and stages[1]["sent_bytes"] > 0  # activations down, logits back
    # the stages share the cores and take turns: each computes with all of them; decode steps take each
    # stage's flat plan (its bits are the modules': test_pp2_flat_decode_is_the_modules_bit_for_bit)
    cores = len(os.sched_getaffinity(0))
    assert [s["num_threads"] for s in stages] == [cores, cores]
    assert [s["cpu_decode"] for s in stages] == [True, True]
    gc.collect()
    assert child_pids() == []


def test_pp2_flat_decode_is_the_modules_bit_for_bit(tiny_llama):
    """Each stage's decode steps run its layers as a flat run of kernel calls (``LlamaCpuDecode`` from the
    previous stage's hidden and residual); ``enforce_eager=True`` runs the modules: same tokens, and every
    logprob equal to the bit."""
    assert_flat_decode_is_the_modules(tiny_llama, 1, LONG_PROMPTS, pipeline_parallel_size=2)
    gc.collect()
    assert child_pids() == []


def test_cpu_stages_share_the_cores_and_tp_ranks_split_them(monkeypatch):
    """On CPU a pipelined step runs its stages one after another, so a rank takes the cores of its stage's
    share (cores // tensor_parallel_size) and only a stage's ranks need a core each; a CUDA rank drives a
    device of its own."""
    import torch

    from pagedllm.engine import mp_executor

    monkeypatch.setattr(mp_executor, "available_cores", lambda: 4)
    monkeypatch.delenv(mp_executor.OVERSUBSCRIBE_ENV, raising=False)
    cpu = torch.device("cpu")
    assert mp_executor.threads_per_rank(cpu, world_size=2, tensor_parallel_size=1) == 4  # PP=2
    assert mp_executor.threads_per_rank(cpu, world_size=4, tensor_parallel_size=2) == 2  # TP=2 x PP=2
    assert mp_executor.threads_per_rank(cpu, world_size=2, tensor_parallel_size=2) == 2  # TP=2
    assert mp_executor.threads_per_rank(torch.device("cuda"), world_size=4, tensor_parallel_size=2) == 1
    mp_executor.check_placeable(8, cpu, tensor_parallel_size=4)  # 2 stages of 4 ranks on 4 cores
    with pytest.raises(ValueError, match=r"tensor_parallel_size=5 needs 5 CPU cores, one per rank; this process "
                                         r"may use 4"):
        mp_executor.check_placeable(10, cpu, tensor_parallel_size=5)


@pytest.mark.parametrize("layers,stages,expected", [
    (61, 2, [(0, 31), (31, 61)]),  # vLLM's documented examples: the remainder before the last stage
    (61, 4, [(0, 15), (15, 30), (30, 46), (46, 61)]),
    (3, 2, [(0, 2), (2, 3)]),
    (4, 2, [(0, 2), (2, 4)]),
])
def test_layer_split_is_vllms(layers, stages, expected, monkeypatch):
    from pagedllm.models.pipeline import get_pp_indices

    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION", raising=False)
    assert [get_pp_indices(layers, r, stages) for r in range(stages)] == expected
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", ",".join(str(b - a) for a, b in reversed(expected)))
    assert get_pp_indices(layers, 0, stages) == (0, expected[-1][1] - expected[-1][0])
    assert get_pp_indices(layers, 0, 1) == (0, layers)  # one stage: all layers, whatever the variable says


def test_microbatches_split_by_tokens():
    from pagedllm.worker.pipeline_stage import split_microbatches

    assert split_microbatches([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert split_microbatches([1, 1, 30], 2) == [range(0, 2), range(2, 3)]
    assert split_microbatches([50, 1, 1], 2) == [range(0, 1), range(1, 3)]
    assert split_microbatches([5], 4) == [range(0, 1)]
    assert split_microbatches([1, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]


@pytest.mark.parametrize("tokens,stages,expected", [(32, 2, 1), (127, 2, 1), (128, 2, 2), (2048, 2, 2), (200, 4, 3)])
def test_default_microbatches_keep_64_tokens_each(tokens, stages, expected):
    from pagedllm.worker.model_runner import default_microbatches

    assert default_microbatches(tokens, stages) == expected


def test_what_pipeline_parallelism_does_not_cover_is_refused_before_any_process_starts(tiny_llama, tmp_path,
                                                                                        monkeypatch):
    with pytest.raises(ValueError, match="pipeline_parallel_size=4 is larger than the model's 3 layers"):
        LLM(tiny_llama, pipeline_parallel_size=4, dtype="float32")
    with pytest.raises(ValueError, match="pipeline_parallel_size=2 with enable_lora=True"):
        LLM(tiny_llama, pipeline_parallel_size=2, dtype="float32", enable_lora=True)
    import transformers as hf

    gpt2 = save_model(tmp_path, hf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=49152))
    with pytest.raises(ValueError, match="GPT2LMHeadModel does not split into pipeline stages"):
        LLM(gpt2, pipeline_parallel_size=2, dtype="float32")
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "2,2")
    with pytest.raises(ValueError, match="VLLM_PP_LAYER_PARTITION='2,2' must list 2 positive layer counts summing "
                                         "to the model's 3 layers"):
        LLM(tiny_llama, pipeline_parallel_size=2, dtype="float32")
    assert child_pids() == []


def _configs():
    from transformers import GPTNeoXConfig, LlamaConfig, MixtralConfig, Qwen2Config

    common = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=3, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return {
        "llama-gqa": LlamaConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common),
        # one KV head, fewer than the TP ranks: replicated on both ranks of each stage
        "llama-mqa": LlamaConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, **common),
        "mixtral-moe": MixtralConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     num_local_experts=4, num_experts_per_tok=2, sliding_window=None, **common),
        "gpt-neox-parallel-residual": GPTNeoXConfig(intermediate_size=128, num_attention_heads=4, rotary_pct=0.25,
                                                    use_parallel_residual=True, **common),
        # tied: the last stage's LM head loads the embedding's tensor (the first stage holds the embedding)
        "qwen2-bias-tied": Qwen2Config(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                       **{**common, "tie_word_embeddings": True}),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-gqa", "llama-mqa", "mixtral-moe", "gpt-neox-parallel-residual",
                                  "qwen2-bias-tied"])
def test_pp2_and_tp2xpp2_match_tp1_per_architecture(name, tmp_path, monkeypatch):
    """32 tokens x 4 prompts, greedy, with prompt logprobs; PP=2 holds each stage's layers to the byte,
    TP=2 x PP=2 about half of that per rank."""
    monkeypatch.setenv("PAGEDLLM_PP_MICROBATCHES", "2")  # two in flight even in these small steps
    config = _configs()[name]
    path = save_model(tmp_path, config)
    ref, (rank0,) = run(path, 1, LONG_PROMPTS, 32, prompt_logprobs=2)
    got, stages = run(path, 1, LONG_PROMPTS, 32, prompt_logprobs=2, pipeline_parallel_size=2)
    worst_pp = assert_same_generation(ref, got)
    assert [s["param_bytes"] for s in stages] == stage_bytes(path, 2, tied=config.tie_word_embeddings)
    got, ranks = run(path, 2, LONG_PROMPTS, 32, prompt_logprobs=2, pipeline_parallel_size=2)
    worst_both = assert_same_generation(ref, got)
    print(f"{name}: max logprob difference PP=2 {worst_pp:.2e}, TP=2xPP=2 {worst_both:.2e}; bytes per stage "
          f"{[s['param_bytes'] for s in stages]}, per rank {[r['param_bytes'] for r in ranks]}")
    for rank, r in enumerate(ranks):  # ranks 0, 1: the first stage; 2, 3: the last
        assert r["param_bytes"] < 0.56 * stages[rank // 2]["param_bytes"], (ranks, stages)
    gc.collect()
    assert child_pids() == []


@pytest.mark.slow
@pytest.mark.parametrize("count", ["1", "3", None])
def test_any_number_of_microbatches_gives_the_same_generation(tiny_llama, count, monkeypatch):
    """1: the stages one after another; 3: more micro-batches than stages (one prompt runs alone); None:
    the default (two for the prefill step, one for the small decode steps)."""
    ref, _ = run(tiny_llama, 1, LONG_PROMPTS, 16, prompt_logprobs=1)
    if count is not None:
        monkeypatch.setenv("PAGEDLLM_PP_MICROBATCHES", count)  # read by the driver's runner
    got, _ = run(tiny_llama, 1, LONG_PROMPTS, 16, prompt_logprobs=1, pipeline_parallel_size=2)
    assert_same_generation(ref, got)
    gc.collect()
    assert child_pids() == []


@pytest.mark.slow
def test_pp2_matches_tp1_on_the_bundled_model():
    """SmolLM2-135M (30 layers, 9 heads: TP=2 cannot split it, PP=2 can), dequantized to fp32."""
    path = bundled_path()
    ref, (rank0,) = run(path, 1, LONG_PROMPTS, 32, dequantize_gguf=True)
    got, stages = run(path, 1, LONG_PROMPTS, 32, dequantize_gguf=True, pipeline_parallel_size=2)
    worst = assert_same_generation(ref, got)
    print(f"bundled: max logprob difference {worst:.2e}; bytes per stage {[s['param_bytes'] for s in stages]} "
          f"of {rank0['param_bytes']}")
    # tied embeddings: the first stage holds the embedding, the last a copy as its LM head
    assert sum(s["param_bytes"] for s in stages) > rank0["param_bytes"]
    assert all(s["param_bytes"] < 0.75 * rank0["param_bytes"] for s in stages)
    gc.collect()
    assert child_pids() == []


LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


def kill_soon(pid: int, delay: float = 1.0) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), os.kill(pid, signal.SIGKILL)))
    thread.start()
    return thread


@pytest.mark.slow
def test_killed_stage_fails_the_generation_and_leaves_no_process(tiny_llama):
    llm = LLM(tiny_llama, pipeline_parallel_size=2, dtype="float32", kv_cache_memory=16 << 20)
    (worker,) = llm.llm_engine.executor.worker_pids
    killer = kill_soon(worker)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match=rf"worker rank 1 \(pid {worker}\) died with exit code -9"):
        llm.generate(["Hello"] * 8, LONG, use_tqdm=False)
    killer.join()
    assert time.monotonic() - started < 30  # an error, not a hang
    assert child_pids() == []
    with pytest.raises(WorkerDiedError, match="cannot run more steps"):
        llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    del llm
    gc.collect()


@pytest.mark.slow
def test_killed_stage_fails_in_flight_async_requests(tiny_llama):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine, EngineDeadError

    engine = AsyncEngine(config=EngineConfig.from_kwargs(tiny_llama, pipeline_parallel_size=2, dtype="float32",
                                                         kv_cache_memory=16 << 20))
    (worker,) = engine.engine.executor.worker_pids
    killer = kill_soon(worker)
    with pytest.raises(EngineDeadError, match="WorkerDiedError.*rank 1"):
        for _ in engine.generate_sync("Hello", LONG):
            pass
    killer.join()
    assert not engine.healthy  # what /health answers 503 for
    assert child_pids() == []
    engine.shutdown()
