"""Falcon (7B-style multi-query, 40B/180B-style grouped "new decoder architecture", plain MHA).

Each variant lays its fused QKV rows out differently; they are split into q/k/v shards at load
time so the forward pass is one layout. ALiBi checkpoints (falcon-rw, ``alibi=True``) have no
rotary embedding; their bias is added before the 1/sqrt(head_dim) scaling in the reference code,
so the slopes handed to the attention layer are divided by it.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import get_act_fn
from pagedllm.models.layers.attention import Attention, local_alibi_slopes
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, rope_parameters
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped


def _num_kv_heads(config) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _split_qkv(config, tensor: torch.Tensor):
    """The q, k, v row blocks of Falcon's fused ``query_key_value`` (weight or bias)."""
    heads, kv = config.num_attention_heads, _num_kv_heads(config)
    d = config.hidden_size // heads
    rest = tensor.shape[1:]
    if config.new_decoder_architecture:  # [kv group, (q heads of the group | k | v), d]
        t = tensor.view(kv, heads // kv + 2, d, *rest)
        return (t[:, :-2].reshape(heads * d, *rest), t[:, -2].reshape(kv * d, *rest),
                t[:, -1].reshape(kv * d, *rest))
    if not config.multi_query:  # [head, (q|k|v), d]
        t = tensor.view(heads, 3, d, *rest)
        return tuple(t[:, i].reshape(heads * d, *rest) for i in range(3))
    return tensor.split([heads * d, d, d], dim=0)


class FalconAttention(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        heads = config.num_attention_heads
        self.head_dim = config.hidden_size // heads
        self.query_key_value = QKVParallelLinear(config.hidden_size, self.head_dim, heads, _num_kv_heads(config),
                                                 bias=config.bias)
        self.nh, self.nkv = self.query_key_value.num_heads, self.query_key_value.num_kv_heads
        self.dense = RowParallelLinear(config.hidden_size, config.hidden_size, bias=config.bias)
        scale = self.head_dim ** -0.5
        self.rotary_emb = None
        slopes = None
        if config.alibi:
            slopes = [s * scale for s in _bf16(local_alibi_slopes(heads, self.nh))]
        else:
            self.rotary_emb = RotaryEmbedding(self.head_dim, self.head_dim, max_position, rope_parameters(config))
        self.attn = Attention(self.nh, self.head_dim, scale, self.nkv, alibi_slopes=slopes)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T, D = hidden.shape[0], self.head_dim
        q, k, v = self.query_key_value(hidden).split([self.nh * D, self.nkv * D, self.nkv * D], dim=-1)
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q.view(T, self.nh, D), k.view(T, self.nkv, D))
        return self.dense(self.attn(q.reshape(T, -1), k.reshape(T, -1), v))


def _bf16(slopes: list[float]) -> list[float]:
    """Falcon's reference code rounds its ALiBi slopes to bfloat16 (a no-op up to 8 heads, not for 32)."""
    return torch.tensor(slopes, dtype=torch.float32).bfloat16().float().tolist()


class FalconMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = getattr(config, "ffn_hidden_size", None) or 4 * config.hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, inner, bias=config.bias)
        self.dense_4h_to_h = RowParallelLinear(inner, config.hidden_size, bias=config.bias)
        self.act = get_act_fn(getattr(config, "activation", None) or "gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.new_arch, self.parallel = config.new_decoder_architecture, config.parallel_attn
        num_ln = config.num_ln_in_parallel_attn or (2 if self.new_arch else 1)
        self.two_norms = self.new_arch and num_ln == 2
        self.self_attention = FalconAttention(config, max_position)
        self.mlp = FalconMLP(config)
        if self.two_norms:
            self.ln_attn = LayerNorm(hidden, eps=eps)
            self.ln_mlp = LayerNorm(hidden, eps=eps)
        else:
            self.input_layernorm = LayerNorm(hidden, eps=eps)
            if not self.parallel:
                self.post_attention_layernorm = LayerNorm(hidden, eps=eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.two_norms:
            attn = self.self_attention(positions, self.ln_attn(hidden))
            return hidden + attn + self.mlp(self.ln_mlp(hidden))
        x = self.input_layernorm(hidden)
        attn = self.self_attention(positions, x)
        if self.parallel or self.new_arch:
            return hidden + attn + self.mlp(x)
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class FalconModel(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(FalconDecoderLayer(config, max_position) for _ in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids)
        for layer in self.h:
            hidden = layer(positions, hidden)
        return self.ln_f(hidden)


class FalconForCausalLM(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.transformer = FalconModel(config, max_position or config.max_position_embeddings)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", True)

        def mapper(name: str, tensor: torch.Tensor):
            if tied and name == "lm_head.weight":
                return
            if ".query_key_value." in name:
                yield from ((name, part, s) for part, s in zip(_split_qkv(self.config, tensor), "qkv"))
                return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
