"""The bundled SmolLM2-135M (its float32 weights) quantized to GPTQ and AWQ by the test quantizer: a
real model's shapes (576 = 4.5 groups of 128, 9 heads, 3 KV heads, tied embeddings), greedy tokens equal
to its dequantized dense twin, and the resident bytes of the packed layers."""
import pytest

from model_fixtures import bundled_path
from pagedllm import LLM, SamplingParams
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization.gguf_model import weight_bytes
from pagedllm.quantization.w4a16_linear import W4A16LinearMethod
from w4a16_files import write_quantized

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The three laws of robotics are"]
PARAMS = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)


@pytest.mark.slow  # quantizes 135M weights and loads two models per format (~1 min)
@pytest.mark.parametrize("method,options", [("gptq", dict(bits=4, group_size=128, sym=False, desc_act=True)),
                                            ("awq", dict(group_size=128))])
def test_bundled_model_quantized_gives_the_dense_twins_tokens(tmp_path, method, options):
    quantized_dir, dense_dir = write_quantized(bundled_path(), tmp_path / "q", tmp_path / "d", method, **options)
    quantized = LLM(quantized_dir, dtype="float32", kv_cache_memory=32 << 20)
    model = quantized.llm_engine.runner.model
    layers = [m for n, m in model.named_modules() if isinstance(m, LinearBase) and ".layers." in n]
    assert len(layers) == 4 * 30 and all(isinstance(m.linear_method, W4A16LinearMethod) for m in layers)
    # 4-bit codes + a float32 scale and zero per 128 weights: 4.5 bits per linear weight; the tied
    # 49152 x 576 embedding (108 MiB of float32) stays dense; 8 MiB for norms and rotary tables
    linear_weights = sum(m.input_size * m.output_size for m in layers)
    assert weight_bytes(model) < 4 * model.config.vocab_size * 576 + linear_weights * 0.6 + (8 << 20)
    got = [o.outputs[0].token_ids for o in quantized.generate(PROMPTS, PARAMS, use_tqdm=False)]
    del quantized
    dense = LLM(dense_dir, dtype="float32", kv_cache_memory=32 << 20)
    assert got == [o.outputs[0].token_ids for o in dense.generate(PROMPTS, PARAMS, use_tqdm=False)]
