"""A model architecture registered by a plugin after start-up is what ``LLM`` runs."""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.layers.attention import Attention
from pagedllm.plugins.hookspecs import hookimpl

ARCH = "MockForCausalLM"
TOKEN = 1234  # the only token the mock model ever predicts


class MockForCausalLM(nn.Module):
    """Logits that peak at ``TOKEN`` whatever the input; one attention layer so the engine can size a KV cache."""

    calls = 0

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.attn = Attention(num_heads=1, head_dim=8, scale=1.0, num_kv_heads=1)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return torch.zeros(input_ids.shape[0], 1)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], self.vocab_size)
        logits[:, TOKEN] = 1.0
        return logits

    def load_weights(self, weights) -> set[str]:
        return {name for name, _ in weights}


class MockModels:
    @hookimpl
    def register_models(self, register):
        register(ARCH, MockForCausalLM)


def _mock_model_folder(path) -> str:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from model_fixtures import tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64,
                architectures=[ARCH]).save_pretrained(path)
    save_file({"unused": torch.zeros(1)}, str(path / "model.safetensors"))
    tokenizer.save_pretrained(path)
    return str(path)


def test_llm_runs_a_model_registered_later(tmp_path, register_plugin):
    from pagedllm import LLM, SamplingParams
    from pagedllm.models import supported_architectures

    folder = _mock_model_folder(tmp_path)
    assert ARCH not in supported_architectures()  # the registry was consulted before the plugin came
    register_plugin(MockModels(), "mock-models")
    assert ARCH in supported_architectures()

    llm = LLM(folder, dtype="float32", kv_cache_memory=1 << 20, max_model_len=64)
    before = MockForCausalLM.calls
    out = llm.generate(["Hello, my name is"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert out[0].outputs[0].token_ids == [TOKEN] * 5
    assert MockForCausalLM.calls - before == 5  # one prefill, four decodes


def test_unregistered_model_is_gone(register_plugin):
    from pagedllm.models import supported_architectures

    register_plugin(MockModels(), "mock-models")
    assert ARCH in supported_architectures()
    from pagedllm.plugins.manager import pm

    pm.unregister(name="mock-models")
    assert ARCH not in supported_architectures()
