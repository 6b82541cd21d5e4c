"""Llama family: Llama 1/2/3 (incl. llama3 RoPE scaling), Mistral, Qwen2 (qkv bias), SmolLM.

GQA via ``num_key_value_heads``; tied or untied embeddings; q/k/v and gate/up projections
fused into single matmuls. The block is shared by every pre-norm RMSNorm family here (Qwen3,
Phi-3, Mixtral, Baichuan): they override ``attention`` or ``mlp``, which the layers call with
their ``layer_idx``.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.causal_lm import GATE_UP_SHARDS, QKV_SHARDS, CausalLM
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.mlp import GatedMLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import get_rope, partial_rotary_factor, rope_parameters
from pagedllm.models.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.pipeline import is_last_stage, make_layers, on_first_stage, on_last_stage

__all__ = ["Attention", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int, family: "LlamaForCausalLM"):
        super().__init__()
        self.self_attn = family.attention(config, layer_idx, max_position)
        self.mlp = family.mlp(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    pp_carry = 2  # a pipeline stage hands the next one (hidden, residual)

    def __init__(self, config, max_position: int, family: "LlamaForCausalLM"):
        super().__init__()
        self.embed_tokens = on_first_stage(lambda: VocabParallelEmbedding(config.vocab_size, config.hidden_size))
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers, lambda i: LlamaDecoderLayer(config, i, max_position, family))
        self.norm = on_last_stage(lambda: RMSNorm(config.hidden_size, config.rms_norm_eps))
        self.last_stage = is_last_stage()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate=None):
        hidden, residual = (self.embed_tokens(input_ids), None) if intermediate is None else intermediate
        for layer in self.layers[self.start_layer:self.end_layer]:
            hidden, residual = layer(positions, hidden, residual)
        if not self.last_stage:
            return hidden, residual
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(CausalLM):
    supports_pp = True
    packed_modules_mapping = {**QKV_SHARDS, **GATE_UP_SHARDS}

    def build_body(self, config, max_position: int) -> nn.Module:
        return LlamaModel(config, max_position, self)

    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    def attention(self, config, layer_idx: int, max_position: int, **kwargs) -> QKVAttention:
        """GQA attention with (partial) rotary and the config's sliding window."""
        dim = head_dim(config)
        rotary_dim = int(dim * partial_rotary_factor(config))  # < head_dim in Phi-4-mini
        sliding_window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) is False:
            sliding_window = None
        qkv_bias, o_bias = self.attention_biases(config)
        kwargs.setdefault("sliding_window", sliding_window)
        return QKVAttention(config.hidden_size, config.num_attention_heads, num_kv_heads(config), dim,
                            qkv_bias=qkv_bias, o_bias=o_bias,
                            rotary_emb=get_rope(dim, rotary_dim, max_position, rope_parameters(config)), **kwargs)

    def mlp(self, config, layer_idx: int) -> nn.Module:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported by the Llama model (silu)")
        return GatedMLP(config.hidden_size, config.intermediate_size, bias=getattr(config, "mlp_bias", False))


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        return True, False
