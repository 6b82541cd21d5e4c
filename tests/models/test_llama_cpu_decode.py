"""The flat kernel-call decode step (``models/llama_cpu_decode.py``) against the model's modules
(``enforce_eager=True``): the same kernels in the same order, so the same tokens and the same logprobs, bit for
bit, over decode steps of one and of several sequences, in float32 and bfloat16, with bf16 and fp8 KV caches, on
dense and GGUF-quantized weights; and models it does not reproduce run their modules."""
import pytest

from model_fixtures import BUNDLED, make_tiny_model
from pagedllm import LLM, SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time there was a"]


def _outputs(llm, prompts):
    """Token ids and top-2 logprobs of 12 greedy tokens per prompt: the prompts together (decode steps of 3 rows
    once their prefills are done) and the first alone (steps of 1 row)."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    runs = [llm.generate(prompts, params, use_tqdm=False), llm.generate(prompts[:1], params, use_tqdm=False)]
    return [(o.outputs[0].token_ids, [{t: v.logprob for t, v in lp.items()} for lp in o.outputs[0].logprobs])
            for run in runs for o in run]


def _both(model, in_c=False, **kwargs):
    """(outputs with the flat decode, outputs through the modules) of two engines on ``model``."""
    flat = LLM(model, kv_cache_memory=16 << 20, seed=0, **kwargs)
    assert flat.llm_engine.runner.cpu_decode is not None
    assert (flat.llm_engine.runner.cpu_decode.in_c is not None) == in_c
    eager = LLM(model, kv_cache_memory=16 << 20, seed=0, enforce_eager=True, **kwargs)
    assert eager.llm_engine.runner.cpu_decode is None
    return _outputs(flat, PROMPTS), _outputs(eager, PROMPTS)


@pytest.mark.parametrize("arch,dtype,kv", [("llama", "float32", "auto"), ("llama", "bfloat16", "auto"),
                                          ("qwen2", "float32", "auto"), ("llama", "bfloat16", "fp8")])
def test_dense_tiny_models_decode_the_same_bits(tmp_path, arch, dtype, kv):
    path = make_tiny_model(tmp_path / arch, arch)
    flat, eager = _both(path, dtype=dtype, kv_cache_dtype=kv)
    assert flat == eager


@pytest.mark.parametrize("kv", ["auto", "fp8"])
def test_bundled_gguf_model_decodes_the_same_bits(kv):
    """The bundled Q4_1 file in the default dtype (8-bit activation kernels, bf16 in and out on this CPU): its
    layers run as one C call (kernels/cpu_decode_layers.c) for steps of up to SMALL_BATCH rows, on a bf16 and on
    an fp8 KV cache (whose rows of e4m3 codes and a scale the C call stores and reads with the fp8 kernels)."""
    flat, eager = _both(BUNDLED, in_c=True, kv_cache_dtype=kv)
    assert flat == eager


def test_other_models_run_their_modules(tmp_path):
    window = LLM(make_tiny_model(tmp_path / "mistral", "mistral", sliding_window=8), dtype="float32",
                 kv_cache_memory=16 << 20)
    assert window.llm_engine.runner.cpu_decode is None
