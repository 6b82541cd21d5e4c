"""GPTQ and AWQ checkpoints run quantized: greedy tokens equal those of the same weights dequantized to a
dense float32 checkpoint (written by the test quantizer from its integers, not by the code under test),
on Llama, Mistral and Qwen2 (q/k/v biases) for each format."""
import numpy as np
import pytest
from safetensors.torch import load_file

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization.w4a16_linear import W4A16LinearMethod
from w4a16_reference import reference_awq, reference_gptq
from w4a16_files import write_quantized

SIZES = dict(hidden_size=128, intermediate_size=256)
CASES = {  # (method, arch): quantizer options; the first two run by default, the rest are slow (~3 s each)
    ("gptq", "llama"): dict(bits=4, group_size=32, sym=False, desc_act=True, checkpoint_format="gptq"),
    ("awq", "qwen2"): dict(group_size=64),
    ("gptq", "mistral"): dict(bits=8, group_size=-1, sym=True, checkpoint_format="gptq_v2"),
    ("gptq", "qwen2"): dict(bits=4, group_size=64, sym=True, desc_act=True, shared_order=False),
    ("awq", "llama"): dict(group_size=32),
    ("awq", "mistral"): dict(group_size=128),
}
FAST = [("gptq", "llama"), ("awq", "qwen2")]


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("w4a16_sources")
    return {arch: make_tiny_model(root / arch, arch, **SIZES) for arch in ("llama", "mistral", "qwen2")}


def quantized_pair(tiny_sources, tmp_path, method, arch):
    return write_quantized(tiny_sources[arch], tmp_path / "quantized", tmp_path / "dense", method,
                           **CASES[(method, arch)])


def greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(SEED_PROMPTS, params, use_tqdm=False)]


@pytest.mark.parametrize("method,arch", [pytest.param(*case, marks=[] if case in FAST else pytest.mark.slow)
                                         for case in CASES])
def test_greedy_tokens_equal_the_dequantized_dense_model(tiny_sources, tmp_path, method, arch):
    quantized_dir, dense_dir = quantized_pair(tiny_sources, tmp_path, method, arch)
    quantized = LLM(quantized_dir, dtype="float32", kv_cache_memory=16 << 20)
    layers = {n: m for n, m in quantized.llm_engine.runner.model.named_modules() if isinstance(m, LinearBase)}
    decoder = {n: m for n, m in layers.items() if ".layers." in n}
    assert len(decoder) == 4 * 2 and all(isinstance(m.linear_method, W4A16LinearMethod) for m in decoder.values())
    assert all(not hasattr(m, "weight") for m in decoder.values())  # no dense copy is kept
    qkv = decoder["model.layers.0.self_attn.qkv_proj"].linear_method
    # q|k|v stack into one matrix unless desc_act gave each shard its own column order
    assert len(qkv.weights) == (3 if not CASES[(method, arch)].get("shared_order", True) else 1)
    got = greedy(quantized)
    del quantized
    assert got == greedy(LLM(dense_dir, dtype="float32", kv_cache_memory=16 << 20))


@pytest.mark.parametrize("method,options", [("gptq", dict(bits=4, group_size=32, sym=False, desc_act=True)),
                                            ("gptq", dict(bits=8, group_size=64, checkpoint_format="gptq_v2")),
                                            ("awq", dict(group_size=32))])
def test_quantizer_follows_the_published_packing(tiny_sources, tmp_path, method, options):
    """The fixture's packed tensors, read by the spec reference, are its dense twin: the quantizer and the
    reference (written separately) agree on the layout, so the parity test above checks real layouts."""
    quantized_dir, dense_dir = write_quantized(tiny_sources["llama"], tmp_path / "q", tmp_path / "d", method,
                                               **options)
    packed, dense = load_file(f"{quantized_dir}/model.safetensors"), load_file(f"{dense_dir}/model.safetensors")
    prefix = "model.layers.1.mlp.down_proj"
    if method == "gptq":
        offset = 1 if options.get("checkpoint_format", "gptq") == "gptq" else 0
        expected = reference_gptq(packed[f"{prefix}.qweight"], packed[f"{prefix}.qzeros"], packed[f"{prefix}.scales"],
                                  packed[f"{prefix}.g_idx"], options["bits"], offset)
    else:
        expected = reference_awq(packed[f"{prefix}.qweight"], packed[f"{prefix}.qzeros"], packed[f"{prefix}.scales"],
                                 options["group_size"])
    np.testing.assert_array_equal(dense[f"{prefix}.weight"].double().numpy(), expected)
    assert f"model.layers.0.self_attn.q_proj.weight" not in packed and "lm_head.weight" in packed


def test_quantization_argument_matching_the_checkpoint_is_accepted(tiny_sources, tmp_path):
    quantized_dir, _ = quantized_pair(tiny_sources, tmp_path, "awq", "qwen2")
    llm = LLM(quantized_dir, quantization="awq", dtype="float32", kv_cache_memory=16 << 20)
    qkv = llm.llm_engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.linear_method.config.method == "awq" and len(qkv.linear_method.weights) == 1  # q|k|v stacked


def test_older_gptq_layouts_without_g_idx_and_with_zero_biases(tiny_sources, tmp_path):
    """Checkpoints without g_idx (no desc_act: group = column // group_size) and with the zero bias old
    AutoGPTQ wrote for every layer load as the others (the zero biases are skipped, as vLLM does)."""
    quantized_dir, dense_dir = write_quantized(tiny_sources["llama"], tmp_path / "q", tmp_path / "d", "gptq",
                                               group_size=64, write_g_idx=False, zero_biases=True)
    names = load_file(f"{quantized_dir}/model.safetensors").keys()
    assert "model.layers.0.mlp.down_proj.bias" in names and not any(n.endswith("g_idx") for n in names)
    quantized = LLM(quantized_dir, dtype="float32", kv_cache_memory=16 << 20)
    assert quantized.llm_engine.runner.model.model.layers[0].mlp.down_proj.bias is None
    got = greedy(quantized)
    assert got == greedy(LLM(dense_dir, dtype="float32", kv_cache_memory=16 << 20))
