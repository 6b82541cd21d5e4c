"""GPT-J: interleaved (GPT-J style) partial rotary, attention and MLP in parallel on one LayerNorm."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import get_act_fn
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped


class GPTJAttention(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        heads = config.num_attention_heads
        self.head_dim = config.hidden_size // heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, heads, bias=False)
        self.n = self.qkv_proj.num_heads
        self.out_proj = RowParallelLinear(config.hidden_size, config.hidden_size, bias=False)
        rotary_dim = config.rotary_dim or self.head_dim
        # GPT-J's sinusoid table is fixed at base 10000 (no rope settings in its config).
        self.rotary_emb = RotaryEmbedding(self.head_dim, rotary_dim, max_position,
                                          {"rope_type": "default", "rope_theta": 10000.0}, is_neox_style=False)
        self.attn = Attention(self.n, self.head_dim, self.head_dim ** -0.5, self.n)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T, D = hidden.shape[0], self.head_dim
        q, k, v = self.qkv_proj(hidden).split(self.n * D, dim=-1)
        q, k = self.rotary_emb(positions, q.view(T, self.n, D), k.view(T, self.n, D))
        return self.out_proj(self.attn(q.reshape(T, -1), k.reshape(T, -1), v))


class GPTJMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner or 4 * config.hidden_size
        self.fc_in = ColumnParallelLinear(config.hidden_size, inner, bias=True)
        self.fc_out = RowParallelLinear(inner, config.hidden_size, bias=True)
        self.act = get_act_fn(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class GPTJBlock(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = GPTJAttention(config, max_position)
        self.mlp = GPTJMLP(config)

    def forward(self, positions: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``parts``: tensors whose sum is the residual stream, summed by the next norm (as GPT-NeoX)."""
        x, hidden = self.ln_1.add_and_norm(*parts)
        return self.attn(positions, x), self.mlp(x), hidden  # HF: attn + mlp + residual


class GPTJModel(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(GPTJBlock(config, max_position) for _ in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        parts = (self.wte(input_ids),)
        for block in self.h:
            parts = block(positions, parts)
        return self.ln_f.add_and_norm(*parts)[0]


class GPTJForCausalLM(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.transformer = GPTJModel(config, max_position or config.max_position_embeddings)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, bias=True)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", False)

        def mapper(name: str, tensor: torch.Tensor):
            if name.endswith((".attn.bias", ".attn.masked_bias", "embed_positions")):
                return
            if tied and name == "lm_head.weight":
                return
            for s in "qkv":
                if f".{s}_proj." in name:
                    yield name.replace(f".{s}_proj.", ".qkv_proj."), tensor, s
                    return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
