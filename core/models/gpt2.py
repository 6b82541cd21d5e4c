"""GPT-2: learned absolute positions, pre-LayerNorm blocks, Conv1D checkpoints (weights stored [in, out])."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import get_act_fn
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        hidden = config.hidden_size
        head_dim = hidden // config.num_attention_heads
        self.c_attn = QKVParallelLinear(hidden, head_dim, config.num_attention_heads, config.num_attention_heads, bias=True)
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True)
        scale = head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        n = self.c_attn.num_heads
        self.size = n * head_dim
        self.attn = Attention(n, head_dim, scale, n)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(hidden).split(self.size, dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPT2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.hidden_size
        self.c_fc = ColumnParallelLinear(config.hidden_size, inner, bias=True)
        self.c_proj = RowParallelLinear(inner, config.hidden_size, bias=True)
        self.act = get_act_fn(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden))
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden)
        return self.ln_f(hidden)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", True)

        def mapper(name: str, tensor: torch.Tensor):
            if name.endswith((".attn.bias", ".attn.masked_bias")) or (tied and name.startswith("lm_head.")):
                return
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name  # checkpoints saved from GPT2Model
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            if ".c_attn." in name:
                yield from ((name, part, s) for part, s in zip(tensor.chunk(3, dim=0), "qkv"))
            else:
                yield name, tensor, None

        return load_mapped(self, weights, mapper)
