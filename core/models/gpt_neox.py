"""GPT-NeoX / Pythia: partial rotary (``rotary_pct``), parallel residual, per-head interleaved fused QKV."""
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


class GPTNeoXAttention(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.head_dim = hidden // heads
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = QKVParallelLinear(hidden, self.head_dim, heads, heads, bias=bias)
        self.dense = RowParallelLinear(hidden, hidden, bias=bias)
        self.n = self.query_key_value.num_heads
        rotary_dim = int(self.head_dim * partial_rotary_factor(config, "rotary_pct"))
        params = rope_parameters(config)
        if getattr(config, "rotary_emb_base", None) and not getattr(config, "rope_parameters", None):
            params["rope_theta"] = config.rotary_emb_base  # transformers 4.x name
        self.rotary_emb = RotaryEmbedding(self.head_dim, rotary_dim, max_position, params)
        self.attn = Attention(self.n, self.head_dim, self.head_dim ** -0.5, self.n)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T = hidden.shape[0]
        q, k, v = self.query_key_value(hidden).split(self.n * self.head_dim, dim=-1)
        q, k = self.rotary_emb(positions, q.view(T, self.n, self.head_dim), k.view(T, self.n, self.head_dim))
        return self.dense(self.attn(q, k, v))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True)
        self.dense_4h_to_h = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True)
        self.act = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.parallel = config.use_parallel_residual
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, max_position)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, positions: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``parts``: tensors whose sum is the residual stream; the sum is left to the next norm
        (``LayerNorm.add_and_norm``), which folds it into its own pass."""
        if self.parallel:  # HF: mlp(ln2(x)) + attn(ln1(x)) + x
            normed, normed2, hidden = self.input_layernorm.add_and_norm(*parts, also=self.post_attention_layernorm)
            return self.attention(positions, normed), self.mlp(normed2), hidden
        normed, hidden = self.input_layernorm.add_and_norm(*parts)
        attn = self.attention(positions, normed)
        normed, hidden = self.post_attention_layernorm.add_and_norm(attn, hidden)
        return self.mlp(normed), hidden


class GPTNeoXModel(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.embed_in = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, max_position) for _ in range(config.num_hidden_layers))
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        parts = (self.embed_in(input_ids),)
        for layer in self.layers:
            parts = layer(positions, parts)
        return self.final_layer_norm.add_and_norm(*parts)[0]


class GPTNeoXForCausalLM(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoXModel(config, max_position or config.max_position_embeddings)
        self.embed_out = ParallelLMHead(config.vocab_size, config.hidden_size)
        if getattr(config, "tie_word_embeddings", False):
            self.embed_out.weight = self.gpt_neox.embed_in.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embed_out.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", False)
        heads = self.config.num_attention_heads
        head_dim = self.config.hidden_size // heads

        def mapper(name: str, tensor: torch.Tensor):
            if name.endswith((".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")):
                return
            if tied and name.startswith("embed_out."):
                return
            if ".query_key_value." in name:  # rows are [head, (q|k|v), head_dim]
                parts = tensor.view(heads, 3, head_dim, *tensor.shape[1:])
                for i, s in enumerate("qkv"):
                    yield name, parts[:, i].reshape(heads * head_dim, *tensor.shape[1:]), s
                return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
