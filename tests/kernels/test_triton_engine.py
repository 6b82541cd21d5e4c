"""The whole engine on the triton attention backend (interpreted on CPU) equals the torch backend."""
import pytest

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams


@pytest.mark.parametrize("block_size,kv_cache_dtype", [(16, "auto"), (16, "fp8")])
def test_engine_greedy_tokens_triton_equals_torch(tmp_path, block_size, kv_cache_dtype):
    path = make_tiny_model(tmp_path / "llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2)
    # Prompts of different lengths (crossing a block), chunked prefill mixed with decodes.
    prompts = [SEED_PROMPTS[0], SEED_PROMPTS[1] * 3, SEED_PROMPTS[2] * 2, SEED_PROMPTS[3]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    kwargs = dict(dtype="float32", kv_cache_memory=8 << 20, block_size=block_size, max_num_batched_tokens=32,
                  kv_cache_dtype=kv_cache_dtype)  # fp8: the Triton store writes what the torch twin reads
    ref = LLM(path, attention_backend="torch", **kwargs).generate(prompts, params, use_tqdm=False)
    llm = LLM(path, attention_backend="triton", **kwargs)
    assert llm.llm_engine.runner.backend_cls.name == "triton"
    out = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in ref]


def test_engine_greedy_tokens_with_the_layers_on_triton_equal_torch(tmp_path, monkeypatch):
    """The layers bound as on a GPU (Triton RMSNorm, rotary and SiLU-and-mul, interpreted here) under
    the triton attention backend: the same greedy tokens as the torch backend with the CPU layers."""
    import torch

    from pagedllm.kernels import fused_ops
    from pagedllm.models.layers.custom_op import CustomOp

    path = make_tiny_model(tmp_path / "llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2)
    prompts = [SEED_PROMPTS[0], SEED_PROMPTS[1] * 3]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    kwargs = dict(dtype="float32", kv_cache_memory=8 << 20, max_num_batched_tokens=32)
    ref = LLM(path, attention_backend="torch", **kwargs).generate(prompts, params, use_tqdm=False)
    llm = LLM(path, attention_backend="triton", **kwargs)
    ops = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, CustomOp)]
    calls = dict.fromkeys(("rms_norm", "rotary", "silu_and_mul"), 0)
    for name in calls:
        real = getattr(fused_ops, name)
        monkeypatch.setattr(fused_ops, name, lambda *a, _real=real, _name=name, **k: (
            calls.__setitem__(_name, calls[_name] + 1), _real(*a, **k))[1])
    try:
        bound = {type(m).__name__: m.bind_forward("cuda", torch.float32) for m in ops}
        assert bound == {"RMSNorm": "cuda", "RotaryEmbedding": "cuda", "SiluAndMul": "cuda", "Silu": "native"}
        out = llm.generate(prompts, params, use_tqdm=False)
    finally:  # the rotary layer is shared with other models of this shape (get_rope)
        for m in ops:
            m.bind_forward("cpu", torch.float32)
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in ref]
    assert min(calls.values()) > 0, calls
