"""Shared fixtures for the loader tests: a private conversion cache, tiny random models."""
import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Conversions go to a temp dir, never to the user's ~/.cache/pagedllm."""
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "pagedllm-cache"))
    monkeypatch.delenv("PAGEDLLM_USE_MODELSCOPE", raising=False)
    return tmp_path / "pagedllm-cache"


@pytest.fixture
def tiny_llama():
    """A random 2-layer Llama, small enough to save and load in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()
