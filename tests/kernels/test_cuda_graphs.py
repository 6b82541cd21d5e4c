"""Decode CUDA graphs: padding, buckets and static buffers give the eager step's tokens.

On CPU the graphs are emulated (``replay`` re-runs the captured function over the same static
buffers, with the triton backend interpreted), which checks everything but the capture itself;
with CUDA the real graphs run against ``enforce_eager=True``.
"""
import pytest
import torch

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.worker.cuda_graphs import batch_buckets


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert batch_buckets(256)[-3:] == [224, 240, 256] and len(batch_buckets(256)) == 20


def _generate(llm, n_prompts: int):
    prompts = [SEED_PROMPTS[i % 4] * (1 + i % 3) for i in range(n_prompts)]
    # different lengths, so the decode batch shrinks through several buckets as requests finish
    params = [SamplingParams(temperature=0, max_tokens=3 + 2 * i, ignore_eos=True, logprobs=2)
              for i in range(n_prompts)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    return ([o.outputs[0].token_ids for o in outs],
            [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs])


def _count_replays(graphs):
    calls = {"n": 0}
    run = graphs.run

    def counting(*args, **kwargs):
        calls["n"] += 1
        return run(*args, **kwargs)

    graphs.run = counting
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the real graphs are tested below")
def test_emulated_decode_graphs_equal_the_eager_steps(tmp_path):
    path = make_tiny_model(tmp_path / "llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2)
    kwargs = dict(dtype="float32", kv_cache_memory=8 << 20, attention_backend="triton", max_num_seqs=6,
                  max_model_len=256)
    eager = _generate(LLM(path, **kwargs), 6)
    llm = LLM(path, **kwargs)
    runner = llm.llm_engine.runner
    runner.capture_decode_graphs(6, llm.llm_engine.max_model_len, emulate=True)
    assert runner.graphs is not None and runner.graphs.buckets == [1, 2, 4, 6]
    calls = _count_replays(runner.graphs)
    graphed = _generate(llm, 6)
    assert calls["n"] >= 10  # every decode step went through the buffers (batches 6 .. 1)
    assert graphed[0] == eager[0]
    for a, b in zip(graphed[1], eager[1]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graphs_equal_enforce_eager(tmp_path, dtype):
    path = make_tiny_model(tmp_path / "llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2)
    kwargs = dict(dtype=dtype, kv_cache_memory=64 << 20, max_num_seqs=24)
    eager_llm = LLM(path, enforce_eager=True, **kwargs)
    assert eager_llm.llm_engine.runner.graphs is None
    eager = _generate(eager_llm, 20)
    del eager_llm
    llm = LLM(path, **kwargs)
    assert llm.llm_engine.runner.graphs is not None
    calls = _count_replays(llm.llm_engine.runner.graphs)
    graphed = _generate(llm, 20)
    assert calls["n"] >= 20
    same = sum(a == b for a, b in zip(graphed[0], eager[0]))
    if dtype == "float32":
        assert same == 20
    else:  # bf16: a padded batch may take other GEMM tiles; ties can flip, rarely
        assert same >= 18, same


@pytest.mark.gpu
def test_impossible_gpu_memory_utilization_fails_with_the_numbers(tmp_path):
    path = make_tiny_model(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"gpu_memory_utilization=0.001 caps this engine at .* GiB"):
        LLM(path, dtype="float32", gpu_memory_utilization=0.001)


@pytest.mark.gpu
def test_kv_cache_memory_sizes_the_cache_on_gpu_too(tmp_path):
    from pagedllm.worker.cache_engine import bytes_per_block

    path = make_tiny_model(tmp_path / "llama")
    llm = LLM(path, dtype="float32", kv_cache_memory=16 << 20)
    layers, kv_heads, head_dim = llm.llm_engine.runner.kv_shape
    per_block = bytes_per_block(layers, 16, kv_heads, head_dim, torch.float32)
    assert llm.llm_engine.block_manager.num_blocks == (16 << 20) // per_block
