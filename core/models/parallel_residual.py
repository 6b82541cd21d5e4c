"""One block for the families whose attention and MLP both read the block's input (GPT-J, GPT-NeoX,
Phi, Falcon): ``x + attn(norm(x)) + mlp(norm'(x))``, or the sequential variant some of their
checkpoints use.

The families differ in how many norms feed the two branches (``norms``), in the attention they
build (``ParallelResidualLM.attention``) and in their checkpoint names, which each family's
``renames`` table maps onto the names here: ``model.embed_tokens``, ``model.layers.N.
{input_layernorm, post_attention_layernorm, self_attn.{qkv_proj, o_proj}, mlp.{fc_in, fc_out}}``,
``model.norm``, ``lm_head``.

The residual stream travels as ``parts``, tensors whose sum it is; the next norm adds them in
the order Hugging Face writes it (attention + MLP + input) within its own pass
(``LayerNorm.add_and_norm``: one C call on CPU instead of two more passes over memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.mlp import MLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.pipeline import is_last_stage, make_layers, on_first_stage, on_last_stage

Parts = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BlockShape:
    """``shared``: one norm feeds both branches (GPT-J, Phi, most Falcons); ``separate``: each
    branch its own norm of the same input (GPT-NeoX, Falcon-40B); ``sequential``: the MLP reads
    the norm of input + attention (GPT-NeoX and Falcon checkpoints without parallel attention)."""

    norms: Literal["shared", "separate", "sequential"]
    eps: float
    mlp_size: int
    act: str
    mlp_bias: bool = True


class ParallelResidualBlock(nn.Module):
    def __init__(self, hidden_size: int, shape: BlockShape, attention: QKVAttention):
        super().__init__()
        self.norms = shape.norms
        self.input_layernorm = LayerNorm(hidden_size, eps=shape.eps)
        if shape.norms != "shared":
            self.post_attention_layernorm = LayerNorm(hidden_size, eps=shape.eps)
        self.self_attn = attention
        self.mlp = MLP(hidden_size, shape.mlp_size, shape.act, bias=shape.mlp_bias)

    def forward(self, positions: torch.Tensor, parts: Parts) -> Parts:
        if self.norms == "shared":
            x, hidden = self.input_layernorm.add_and_norm(*parts)
            return self.self_attn(positions, x), self.mlp(x), hidden
        if self.norms == "separate":
            x, x2, hidden = self.input_layernorm.add_and_norm(*parts, also=self.post_attention_layernorm)
            return self.self_attn(positions, x), self.mlp(x2), hidden
        x, hidden = self.input_layernorm.add_and_norm(*parts)
        x, hidden = self.post_attention_layernorm.add_and_norm(self.self_attn(positions, x), hidden)
        return self.mlp(x), hidden


class ParallelResidualModel(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, shape: BlockShape, num_layers: int, build):
        super().__init__()
        self.pp_carry = 2 if shape.norms == "sequential" else 3  # the parts a pipeline stage hands on
        self.embed_tokens = on_first_stage(lambda: VocabParallelEmbedding(vocab_size, hidden_size))
        self.start_layer, self.end_layer, self.layers = make_layers(num_layers, build)
        self.norm = on_last_stage(lambda: LayerNorm(hidden_size, eps=shape.eps))
        self.last_stage = is_last_stage()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate=None):
        parts = (self.embed_tokens(input_ids),) if intermediate is None else tuple(intermediate)
        for layer in self.layers[self.start_layer:self.end_layer]:
            parts = layer(positions, parts)
        if not self.last_stage:
            return parts
        return self.norm.add_and_norm(*parts)[0]


class ParallelResidualLM(CausalLM):
    """A family gives ``block_shape``, ``attention`` and its ``renames``."""

    def block_shape(self, config) -> BlockShape:
        raise NotImplementedError

    def attention(self, config, layer_idx: int, max_position: int) -> QKVAttention:
        raise NotImplementedError

    supports_pp = True

    def build_body(self, config, max_position: int) -> nn.Module:
        shape = self.block_shape(config)
        return ParallelResidualModel(
            config.vocab_size, config.hidden_size, shape, config.num_hidden_layers,
            lambda i: ParallelResidualBlock(config.hidden_size, shape, self.attention(config, i, max_position)))
