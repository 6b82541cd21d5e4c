"""Qwen3: the Llama block with per-head RMSNorm on q and k (before RoPE), and an explicit head_dim."""
from __future__ import annotations

import torch

from pagedllm.models.layers.attention import layer_sliding_window
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, config, layer_idx: int, bias: bool, max_position: int):
        super().__init__(config, bias, False, max_position)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        legacy = bool(getattr(config, "use_sliding_window", False)) and layer_idx >= getattr(
            config, "max_window_layers", 0)
        self.attn.sliding_window = layer_sliding_window(config, layer_idx, legacy)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        T = hidden.shape[0]
        q = self.q_norm(q.view(T, self.num_heads, self.head_dim))
        k = self.k_norm(k.view(T, self.num_kv_heads, self.head_dim))
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q.reshape(T, -1), k.reshape(T, -1), v))


class Qwen3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config, max_position: int | None = None):
        super().__init__(config, max_position)
        max_position = max_position or getattr(config, "max_position_embeddings", 4096)
        bias = bool(getattr(config, "attention_bias", False))
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = Qwen3Attention(config, i, bias, max_position)
