"""Gemma and Gemma 2: sqrt(hidden)-scaled embeddings, (1 + weight) RMSNorm, tanh-GELU gated MLP.

Gemma 2 adds sandwich norms around attention and MLP, ``query_pre_attn_scalar`` scaling,
attention and final-logit soft-capping, and sliding-window attention on alternating layers.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.causal_lm import GATE_UP_SHARDS, QKV_SHARDS, CausalLM
from pagedllm.models.layers.attention import layer_sliding_window
from pagedllm.models.layers.layernorm import GemmaRMSNorm
from pagedllm.models.layers.mlp import GatedMLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, rope_parameters
from pagedllm.models.layers.vocab_embedding import VocabParallelEmbedding


def gemma_attention(config, layer_idx: int, max_position: int, gemma2: bool) -> QKVAttention:
    """Gemma 2 scales by ``query_pre_attn_scalar``, soft-caps scores and slides a window on even layers."""
    dim = config.head_dim
    if gemma2:
        scale = config.query_pre_attn_scalar ** -0.5
        window = layer_sliding_window(config, layer_idx, layer_idx % 2 == 0)
        cap = getattr(config, "attn_logit_softcapping", None)
    else:
        scale, window, cap = dim ** -0.5, None, None
    bias = getattr(config, "attention_bias", False)
    return QKVAttention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, dim,
                        qkv_bias=bias, o_bias=bias, scale=scale, sliding_window=window, logits_soft_cap=cap,
                        rotary_emb=RotaryEmbedding(dim, dim, max_position, rope_parameters(config)))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int, gemma2: bool):
        super().__init__()
        eps, hidden = config.rms_norm_eps, config.hidden_size
        act = (getattr(config, "hidden_activation", None) if gemma2 else None) or config.hidden_act
        self.self_attn = gemma_attention(config, layer_idx, max_position, gemma2)
        self.mlp = GatedMLP(hidden, config.intermediate_size, act)
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.gemma2 = gemma2
        if gemma2:
            self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
            self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden))
        if not self.gemma2:
            hidden = hidden + attn
            return hidden + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + self.post_attention_layernorm(attn)
        return hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))


class GemmaModel(nn.Module):
    def __init__(self, config, max_position: int, gemma2: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GemmaDecoderLayer(config, i, max_position, gemma2)
                                    for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.normalizer = config.hidden_size ** 0.5

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        hidden = hidden * torch.tensor(self.normalizer, dtype=hidden.dtype)  # rounded to the dtype, as in HF
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return self.norm(hidden)


class GemmaForCausalLM(CausalLM):
    gemma2 = False
    packed_modules_mapping = {**QKV_SHARDS, **GATE_UP_SHARDS}

    def build_body(self, config, max_position: int) -> nn.Module:
        self.final_soft_cap = getattr(config, "final_logit_softcapping", None) if self.gemma2 else None
        return GemmaModel(config, max_position, self.gemma2)

    def ties_embeddings(self, config) -> bool:
        return True  # Gemma always ties

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        if self.final_soft_cap:  # in float32 (the sampler's dtype anyway), in place: [B, vocab] is large
            logits = logits.float().div_(self.final_soft_cap).tanh_().mul_(self.final_soft_cap)
        return logits


class Gemma2ForCausalLM(GemmaForCausalLM):
    gemma2 = True
