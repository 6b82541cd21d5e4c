"""Shared fixtures: tiny random Hugging Face models saved as safetensors, and the bundled model."""
from __future__ import annotations

import os

import pytest
import torch

# Test mode: installed third-party plugins stay out of the run (simonw/llm's LLM_LOAD_PLUGINS);
# `PAGEDLLM_LOAD_PLUGINS=name pytest ...` still loads that one on purpose.
os.environ.setdefault("PAGEDLLM_LOAD_PLUGINS", "")

if not torch.cuda.is_available():
    # Triton reads this when kernels are decorated: set it before anything imports them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from model_fixtures import BUNDLED, SEED_PROMPTS, bundled_path, hf_greedy, make_tiny_model  # noqa: F401


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    return bundled_path()


@pytest.fixture(scope="session")
def bundled_llm_fp32():
    from pagedllm import LLM

    # dense: the Hugging Face oracles read the same file dequantized (tests/quantization/ covers the quantized path)
    return LLM(BUNDLED, dtype="float32", kv_cache_memory=512 << 20, seed=0, dequantize_gguf=True)


@pytest.fixture(scope="session")
def hf_bundled_fp32(bundled_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()


@pytest.fixture
def float_activations(monkeypatch):
    """GGUF's direct kernel on float32 activations (no 8-bit rounding: ``gguf_weight.Q8_ACTIVATIONS``), for
    tests that compare a quantized model token for token with the same weights dequantized."""
    from pagedllm.quantization import gguf_weight

    monkeypatch.setattr(gguf_weight, "Q8_ACTIVATIONS", False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
