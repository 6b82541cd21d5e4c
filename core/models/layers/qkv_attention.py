"""The attention sub-block every family shares: fused q|k|v projection, optional per-head norm and
rotary, paged attention, output projection.

Families differ only in sizes, biases, rotary and scaling (constructor arguments) and in their
checkpoint names, which each model's rename table maps onto ``qkv_proj`` / ``o_proj`` /
``q_norm`` / ``k_norm``. Head counts have one set of names: ``num_heads`` / ``num_kv_heads`` (this
rank's), ``head_dim``, ``q_size`` / ``kv_size``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.linear import QKVParallelLinear, RowParallelLinear


class QKVAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool = False, o_bias: bool = False, rotary_emb: nn.Module | None = None,
                 scale: float | None = None, qk_norm: Callable[[int], nn.Module] | None = None,
                 **attention_kwargs):
        """``num_heads`` / ``num_kv_heads``: the model's totals (split across tensor-parallel ranks);
        ``qk_norm``: a norm factory applied per head to q and k before rotary (Qwen3, Phi);
        ``attention_kwargs``: sliding window, soft-cap, ALiBi slopes of ``Attention``."""
        super().__init__()
        self.head_dim = head_dim
        self.qkv_proj = QKVParallelLinear(hidden_size, head_dim, num_heads, num_kv_heads, bias=qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.rotary_emb = rotary_emb
        self.per_head = rotary_emb is not None or qk_norm is not None
        if qk_norm is not None:
            self.q_norm, self.k_norm = qk_norm(head_dim), qk_norm(head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.attn = Attention(self.num_heads, head_dim, head_dim ** -0.5 if scale is None else scale,
                              self.num_kv_heads, **attention_kwargs)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.per_head:
            T = hidden.shape[0]
            q, k = q.view(T, self.num_heads, self.head_dim), k.view(T, self.num_kv_heads, self.head_dim)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if self.rotary_emb is not None:
                q, k = self.rotary_emb(positions, q, k)  # adjacent: one rotation call
        return self.o_proj(self.attn(q, k, v))
