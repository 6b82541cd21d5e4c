"""Shared fixtures: tiny random Hugging Face models saved as safetensors, and the bundled model."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when kernels are decorated: set it before anything imports them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

SEED_PROMPTS = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
BUNDLED = "HuggingFaceTB/SmolLM2-135M-Instruct"


def make_tiny_model(path, arch: str = "llama", **overrides) -> str:
    """Save a small random-weight causal LM (HF config class + HF model) to ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    base = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    base.update(overrides)
    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(**base)
    torch.manual_seed(zlib.crc32(repr((arch, sorted(overrides.items()))).encode()))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the init default, so logits are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(path)
    return str(path)


_BUNDLED_PATH = None


def bundled_path() -> str:
    """The bundled SmolLM2 model as a converted HF folder (cached after the first conversion)."""
    global _BUNDLED_PATH
    if _BUNDLED_PATH is None:
        from pagedllm.loader import resolve_model

        _BUNDLED_PATH = resolve_model(BUNDLED).path
    return _BUNDLED_PATH


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    return bundled_path()


@pytest.fixture(scope="session")
def bundled_llm_fp32():
    from pagedllm import LLM

    return LLM(BUNDLED, dtype="float32", kv_cache_memory=512 << 20, seed=0)


@pytest.fixture(scope="session")
def hf_bundled_fp32(bundled_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """Hugging Face transformers' own greedy generate: the oracle for token-exact parity."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt_ids):].tolist()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
