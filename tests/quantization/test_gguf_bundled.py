"""The bundled Q4_1 SmolLM2 run quantized (the default for a GGUF file) against the same file
dequantized to dense float32 (``dequantize_gguf=True``): greedy tokens, resident weight bytes, and the
refusals of the GGUF path."""
import os

import pytest
import torch

from model_fixtures import BUNDLED
from pagedllm import LLM, SamplingParams
from pagedllm.loader import resolve_model
from pagedllm.loader.gguf_index import read_gguf_index
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization import gguf_weight
from pagedllm.quantization.gguf_linear import GGUFEmbedding, GGUFLinearMethod
from pagedllm.quantization.gguf_model import check_gguf_device, weight_bytes

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The three laws of robotics are"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def quantized_llm():
    """float32 activations (the 8-bit activation path: test_gguf_q8_activations.py), so that the comparisons
    with the dense model below are of the weights alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf_weight, "Q8_ACTIVATIONS", False)
        before = _rss()
        llm = LLM(BUNDLED, dtype="float32", kv_cache_memory=64 << 20, seed=0)
        llm.rss_growth = _rss() - before  # the KV cache is an untouched mmap: its pages are not resident yet
        yield llm


def test_linear_layers_embeddings_and_head_stay_quantized(quantized_llm):
    model = quantized_llm.llm_engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears and all(isinstance(m.linear_method, GGUFLinearMethod) for m in linears)
    assert {w.type_name for m in linears for w in m.linear_method.weights} == {"Q4_1"}
    assert all(m.weight.numel() == 0 for m in linears)  # no dense copy kept
    assert isinstance(model.model.embed_tokens, GGUFEmbedding)
    assert model.model.embed_tokens.weight_data.type_name == "Q8_0"
    (head,) = model.lm_head.linear_method.weights
    assert head.data is model.model.embed_tokens.weight_data.data  # tied: one set of blocks


def test_resident_weight_bytes_within_1_2x_the_file_tensors(quantized_llm):
    gguf = resolve_model(BUNDLED).gguf_file
    tensor_bytes = sum(t.data.nbytes for t in read_gguf_index(gguf)[1])  # the file's tensor section
    resident = weight_bytes(quantized_llm.llm_engine.runner.model)
    print(f"weights {resident / 2**20:.1f} MiB for {tensor_bytes / 2**20:.1f} MiB of GGUF tensors "
          f"({resident / tensor_bytes:.3f}x); process RSS grew {quantized_llm.rss_growth / 2**20:.0f} MiB at load")
    assert resident <= 1.2 * tensor_bytes


@pytest.mark.slow  # loads the 540 MB dense model too
def test_greedy_tokens_equal_the_dense_dequantized_model(quantized_llm, bundled_llm_fp32):
    """32 tokens x 4 prompts, token for token: float32 math on the same weights (no activation quantization)."""
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    quantized = [o.outputs[0].token_ids for o in quantized_llm.generate(PROMPTS, params, use_tqdm=False)]
    dense = [o.outputs[0].token_ids for o in bundled_llm_fp32.generate(PROMPTS, params, use_tqdm=False)]
    assert quantized == dense


@pytest.mark.slow
def test_logprobs_close_to_the_dense_model(quantized_llm, bundled_llm_fp32):
    """Teacher-forced prompt logprobs over 4 prompts: the same weights, summed in another order."""
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    text = [p * 4 for p in PROMPTS]
    for q, d in zip(quantized_llm.generate(text, params, use_tqdm=False),
                    bundled_llm_fp32.generate(text, params, use_tqdm=False)):
        for lq, ld in zip(q.prompt_logprobs[1:], d.prompt_logprobs[1:]):
            (tq, vq), = lq.items()
            assert abs(vq.logprob - ld[tq].logprob) < 1e-3


def test_quantization_gguf_on_a_dense_checkpoint_is_refused(tmp_path):
    from model_fixtures import make_tiny_model

    path = make_tiny_model(tmp_path / "tiny")
    with pytest.raises(ValueError, match="quantization='gguf' but model=.* is not a GGUF file"):
        LLM(path, quantization="gguf", kv_cache_memory=8 << 20)


def test_contradicting_arguments_and_other_devices_are_refused():
    with pytest.raises(ValueError, match="quantization='gguf' and dequantize_gguf=True contradict"):
        LLM(BUNDLED, quantization="gguf", dequantize_gguf=True)
    with pytest.raises(ValueError, match=r"quantization='gguf' has no cuda kernels.*dequantize_gguf=True"):
        check_gguf_device(torch.device("cuda"))


TEACHER_FORCED = ["The history of the Roman Empire spans many centuries, beginning with",
                  "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n",
                  "Photosynthesis is the process by which green plants",
                  "Once upon a time in a small village by the sea, there lived",
                  "The three laws of robotics, as stated by Isaac Asimov, are",
                  "In mathematics, a prime number is a natural number greater than 1 that",
                  "To make a cup of tea, first boil the water, then",
                  "The capital of France is Paris. The capital of Germany is"]


@pytest.mark.slow  # loads the model twice in bf16
def test_bf16_batches_agree_with_the_dense_bf16_model():
    """Issue 22's criterion for a batch path with other numerics than the dense one: in bf16 (the AMX tiles
    where the CPU has AMX-BF16, else the bf16 dequantize + GEMM), teacher-forced top-1 tokens over 547 prompt
    positions (8 prompts in one batch: prefill rows > 16) agree >= 99% with the same file dequantized to
    dense bf16, and the prompt tokens' logprobs differ by < 0.05 on average (measured on the AMX Xeon: 99.3%,
    0.018; the dense bf16 model itself agrees 98.9% with dense float32)."""
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    text = [p * 5 for p in TEACHER_FORCED]

    def teacher_forced(**kwargs):
        llm = LLM(BUNDLED, dtype="bfloat16", kv_cache_memory=128 << 20, seed=0, **kwargs)
        return [(next(t for t, v in lp.items() if v.rank == 1), lp[tok].logprob)
                for o in llm.generate(text, params, use_tqdm=False)
                for tok, lp in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])]

    quantized, dense = teacher_forced(), teacher_forced(dequantize_gguf=True)
    assert len(quantized) == len(dense) >= 512
    agree = sum(q[0] == d[0] for q, d in zip(quantized, dense)) / len(dense)
    mean_diff = sum(abs(q[1] - d[1]) for q, d in zip(quantized, dense)) / len(dense)
    assert agree >= 0.99 and mean_diff < 0.05, (agree, mean_diff)
