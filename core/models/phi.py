"""Phi (phi-1, phi-1.5, phi-2): partial rotary, a parallel attention+MLP block on one LayerNorm, biased head."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import get_act_fn
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, partial_rotary_factor, rope_parameters
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped


class PhiAttention(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, kv_heads, bias=True)
        self.nh, self.nkv = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.dense = RowParallelLinear(heads * self.head_dim, config.hidden_size, bias=True)
        if config.qk_layernorm:
            self.q_layernorm = LayerNorm(self.head_dim, eps=config.layer_norm_eps)
            self.k_layernorm = LayerNorm(self.head_dim, eps=config.layer_norm_eps)
        self.qk_layernorm = config.qk_layernorm
        rotary_dim = int(self.head_dim * partial_rotary_factor(config))
        self.rotary_emb = RotaryEmbedding(self.head_dim, rotary_dim, max_position, rope_parameters(config))
        self.attn = Attention(self.nh, self.head_dim, self.head_dim ** -0.5, self.nkv)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T, D = hidden.shape[0], self.head_dim
        q, k, v = self.qkv_proj(hidden).split([self.nh * D, self.nkv * D, self.nkv * D], dim=-1)
        q, k = q.view(T, self.nh, D), k.view(T, self.nkv, D)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = self.rotary_emb(positions, q, k)
        return self.dense(self.attn(q.reshape(T, -1), k.reshape(T, -1), v))


class PhiMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True)
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True)
        self.act = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PhiAttention(config, max_position)
        self.mlp = PhiMLP(config)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.input_layernorm(hidden)
        return hidden + self.self_attn(positions, x) + self.mlp(x)


class PhiModel(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(config, max_position) for _ in range(config.num_hidden_layers))
        self.final_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return self.final_layernorm(hidden)


class PhiForCausalLM(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.model = PhiModel(config, max_position or config.max_position_embeddings)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, bias=True)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", False)

        def mapper(name: str, tensor: torch.Tensor):
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                return
            for s in "qkv":
                if f".{s}_proj." in name:
                    yield name.replace(f".{s}_proj.", ".qkv_proj."), tensor, s
                    return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
