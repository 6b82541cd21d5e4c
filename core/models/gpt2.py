"""GPT-2: learned absolute positions, pre-LayerNorm blocks, Conv1D checkpoints (weights stored [in, out])."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from pagedllm.models.causal_lm import CausalLM, stacked_shards
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.mlp import MLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.weight_utils import Target

_CONV1D = (".qkv_proj.weight", ".o_proj.weight", ".fc_in.weight", ".fc_out.weight")  # every GPT-2 matmul


def gpt2_attention(config, layer_idx: int) -> QKVAttention:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    scale = head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        scale /= layer_idx + 1
    return QKVAttention(config.hidden_size, heads, heads, head_dim, qkv_bias=True, o_bias=True, scale=scale)


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps=eps)
        self.attn = gpt2_attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, eps=eps)
        self.mlp = MLP(config.hidden_size, getattr(config, "n_inner", None) or 4 * config.hidden_size,
                       config.activation_function)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(positions, self.ln_1(hidden))
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
            hidden = block(positions, hidden)
        return self.ln_f(hidden)


class GPT2LMHeadModel(CausalLM):
    body_name = "transformer"
    embedding_name = "transformer.wte"
    tie_by_default = True
    skipped_suffixes = (".attn.bias", ".attn.masked_bias")
    renames = ((".attn.c_attn.", ".attn.qkv_proj."), (".attn.c_proj.", ".attn.o_proj."),
               (".mlp.c_fc.", ".mlp.fc_in."), (".mlp.c_proj.", ".mlp.fc_out."))

    def build_body(self, config, max_position: int) -> nn.Module:
        return GPT2Model(config)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # checkpoints saved from GPT2Model
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        if ".qkv_proj." in name:
            yield from stacked_shards(name, tensor, [tensor.shape[0] // 3] * 3, "qkv")
        else:
            yield name, tensor, None
