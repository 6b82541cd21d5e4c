"""What the quantized GGUF path refuses at load, each with the message that says what to do instead."""
import pytest
import torch
from transformers import GPTNeoXConfig, LlamaConfig

from pagedllm.loader import gguf_tensors
from pagedllm.models.gpt_neox import GPTNeoXForCausalLM
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.quantization import gguf_model
from pagedllm.quantization.gguf_weight import GGUFWeight

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32)


def test_quantized_tensor_for_a_parameter_without_a_gguf_method(monkeypatch):
    """A Q8_0 tensor that lands on a norm (or any parameter that is not a linear layer's weight)."""
    config = LlamaConfig(**TINY)
    model = LlamaForCausalLM(config)
    q8 = GGUFWeight(torch.zeros(1, 34, dtype=torch.uint8), 8, 1, 32, "output_norm.weight")
    monkeypatch.setattr(gguf_model, "iterate_gguf_tensors", lambda *a: iter([("model.norm.weight", q8)]))
    with pytest.raises(ValueError, match=r"'output_norm.weight' \(Q8_0\) maps to 'model.norm.weight', which has no "
                                         r"quantized method.*dequantize_gguf=True"):
        gguf_model.load_gguf_weights(model, "x.gguf", "folder", config, torch.float32)


def test_model_whose_loader_relays_fused_tensors():
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, max_position_embeddings=32)
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM cannot run GGUF weights quantized.*dequantize_gguf=True"):
        gguf_model.load_gguf_weights(GPTNeoXForCausalLM(config), "x.gguf", "folder", config, torch.float32)


def test_architecture_whose_tensors_transformers_rewrites(monkeypatch):
    monkeypatch.setattr(gguf_tensors, "read_gguf_index", lambda path: ("bloom", []))
    with pytest.raises(ValueError, match="GGUF architecture 'bloom' needs tensor rewriting.*dequantize_gguf=True"):
        list(gguf_tensors.iterate_gguf_tensors("x.gguf", LlamaConfig(**TINY), "folder"))


def test_tensor_parallel_over_a_quantized_gguf_file():
    """GGUF block matrices are not split into shards: TP over a quantized file is refused before any worker
    starts, naming the dense switch."""
    from model_fixtures import BUNDLED
    from pagedllm import LLM

    with pytest.raises(ValueError, match=r"tensor_parallel_size=2: a GGUF file runs quantized on one rank.*"
                                         r"dequantize_gguf=True"):
        LLM(BUNDLED, tensor_parallel_size=2)
