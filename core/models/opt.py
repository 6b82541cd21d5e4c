"""OPT: learned positions offset by 2, optional embedding projections, pre- or post-LayerNorm blocks."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from pagedllm.models.causal_lm import QKV_SHARDS, CausalLM
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import ReplicatedLinear
from pagedllm.models.layers.mlp import MLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import Target

POSITION_OFFSET = 2  # OPT's learned position table starts at index 2 (fairseq's padding legacy)


class OPTDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        bias = getattr(config, "enable_bias", True)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = QKVAttention(hidden, heads, heads, hidden // heads, qkv_bias=bias, o_bias=bias)
        self.self_attn_layer_norm = LayerNorm(hidden, elementwise_affine=affine)
        self.mlp = MLP(hidden, config.ffn_dim, config.activation_function, bias=bias)
        self.final_layer_norm = LayerNorm(hidden, elementwise_affine=affine)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.self_attn(positions, x)
        if not self.pre_norm:
            hidden = self.self_attn_layer_norm(hidden)
        x = self.final_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.mlp(x)
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
            hidden = layer(positions, hidden)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        return hidden if self.project_out is None else self.project_out(hidden)


class OPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids, positions)


class OPTForCausalLM(CausalLM):
    embedding_name = "model.decoder.embed_tokens"
    tie_by_default = True
    renames = ((".self_attn.out_proj.", ".self_attn.o_proj."), (".fc1.", ".mlp.fc_in."), (".fc2.", ".mlp.fc_out."))
    packed_modules_mapping = QKV_SHARDS

    def build_body(self, config, max_position: int) -> nn.Module:
        return OPTModel(config)

    def build_head(self, config) -> nn.Module:
        return ParallelLMHead(config.vocab_size, config.word_embed_proj_dim)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if name.startswith("decoder."):
            name = "model." + name  # checkpoints saved from OPTModel
        yield from super().split_fused(name, tensor)
