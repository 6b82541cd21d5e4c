"""OPT: learned positions offset by 2, optional embedding projections, pre- or post-LayerNorm blocks."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import get_act_fn
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ColumnParallelLinear, QKVParallelLinear, ReplicatedLinear, RowParallelLinear
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped

POSITION_OFFSET = 2  # OPT's learned position table starts at index 2 (fairseq's padding legacy)


class OPTAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        bias = getattr(config, "enable_bias", True)
        self.qkv_proj = QKVParallelLinear(hidden, head_dim, heads, heads, bias=bias)
        self.out_proj = RowParallelLinear(hidden, hidden, bias=bias)
        n = self.qkv_proj.num_heads
        self.size = n * head_dim
        self.attn = Attention(n, head_dim, head_dim ** -0.5, n)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.size, dim=-1)
        return self.out_proj(self.attn(q, k, v))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "enable_bias", True)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.ffn_dim, bias=bias)
        self.fc2 = RowParallelLinear(config.ffn_dim, config.hidden_size, bias=bias)
        self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.act = get_act_fn(config.activation_function)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.self_attn(x)
        if not self.pre_norm:
            hidden = self.self_attn_layer_norm(hidden)
        x = self.final_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.fc2(self.act(self.fc1(x)))
        return hidden if self.pre_norm else self.final_layer_norm(hidden)


class OPTDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        proj = config.word_embed_proj_dim
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, config.hidden_size)
        self.project_in = ReplicatedLinear(proj, config.hidden_size) if proj != config.hidden_size else None
        self.project_out = ReplicatedLinear(config.hidden_size, proj) if proj != config.hidden_size else None
        final_norm = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine) if final_norm else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        hidden = hidden + self.embed_positions(positions + POSITION_OFFSET)
        for layer in self.layers:
            hidden = layer(hidden)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        return hidden if self.project_out is None else self.project_out(hidden)


class OPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = OPTDecoder(config)


class OPTForCausalLM(nn.Module):
    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = ParallelLMHead(config.vocab_size, config.word_embed_proj_dim)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tied = getattr(self.config, "tie_word_embeddings", True)

        def mapper(name: str, tensor: torch.Tensor):
            if tied and name.startswith("lm_head."):
                return
            if name.startswith("decoder."):
                name = "model." + name  # checkpoints saved from OPTModel
            for s in "qkv":
                if f".{s}_proj." in name:
                    yield name.replace(f".{s}_proj.", ".qkv_proj."), tensor, s
                    return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
