"""A whole mixed GGUF file (the bundled model with tensors re-stored as Q8_0, Q5_0, Q5_1, Q4_0, F16 and
F32, embeddings in Q4_0) runs quantized: each layer keeps its shards' own types, and greedy tokens
equal those of the same file dequantized to dense float32 by transformers' reader (float32 activations:
the 8-bit activation path has its own tests, test_gguf_q8_activations.py)."""
import pytest

from gguf_files import LOW_BIT_MIX, write_mixed_copy
from pagedllm import LLM, SamplingParams
from pagedllm.loader import resolve_model
from pagedllm.models.layers.linear import LinearBase

PROMPTS = ["The capital of France is", "def fibonacci(n):"]


@pytest.mark.slow  # writes a 94 MB file, converts it for the dense path and loads two models
def test_mixed_file_runs_quantized_with_the_dense_tokens(tmp_path, monkeypatch, float_activations):
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))  # the dense conversion stays in tmp
    mixed = tmp_path / "mixed.gguf"
    write_mixed_copy(resolve_model("smollm2").gguf_file, str(mixed))
    quantized = LLM(str(mixed), dtype="float32", kv_cache_memory=32 << 20)
    types = {name: [w.type_name for w in m.linear_method.weights]
             for name, m in quantized.llm_engine.runner.model.named_modules() if isinstance(m, LinearBase)}
    assert types["model.layers.0.self_attn.qkv_proj"] == ["Q8_0", "F16", "Q5_0"]
    assert types["model.layers.0.mlp.gate_up_proj"] == ["Q5_1", "Q4_0"]
    assert types["model.layers.1.mlp.down_proj"] == ["F32"]
    assert types["model.layers.2.self_attn.qkv_proj"] == ["Q4_1"]
    assert quantized.llm_engine.runner.model.lm_head.linear_method.weights[0].type_name == "Q4_0"
    dense = LLM(str(mixed), dtype="float32", kv_cache_memory=32 << 20, dequantize_gguf=True)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in quantized.generate(PROMPTS, params, use_tqdm=False)]
    assert got == [o.outputs[0].token_ids for o in dense.generate(PROMPTS, params, use_tqdm=False)]


@pytest.mark.slow  # writes a 94 MB file, converts it for the dense path and loads two models
def test_q2_k_and_q3_k_layers_run_quantized_with_the_dense_tokens(tmp_path, monkeypatch, float_activations):
    """The bundled model with four ffn_down layers re-stored as Q2_K / Q3_K (tests' own quantizers; the gguf
    package reads them back for the dense path): those layers keep their blocks, and greedy tokens equal the
    dense float32 model's (transformers' reader dequantizes the same blocks)."""
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))
    low_bit = tmp_path / "low_bit.gguf"
    write_mixed_copy(resolve_model("smollm2").gguf_file, str(low_bit), LOW_BIT_MIX)
    quantized = LLM(str(low_bit), dtype="float32", kv_cache_memory=32 << 20)
    modules = dict(quantized.llm_engine.runner.model.named_modules())
    assert [modules[f"model.layers.{i}.mlp.down_proj"].linear_method.weights[0].type_name for i in range(5)] == [
        "Q2_K", "Q3_K", "Q2_K", "Q3_K", "Q4_1"]
    dense = LLM(str(low_bit), dtype="float32", kv_cache_memory=32 << 20, dequantize_gguf=True)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in quantized.generate(PROMPTS, params, use_tqdm=False)]
    assert got == [o.outputs[0].token_ids for o in dense.generate(PROMPTS, params, use_tqdm=False)]
