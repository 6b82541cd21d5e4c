"""Baichuan 1 and 2 (``trust_remote_code`` checkpoints): Llama blocks with one fused ``W_pack`` q|k|v.

The published variants share their weight names and differ in two places:

- position encoding: RoPE (Baichuan-7B ``BaiChuanForCausalLM``, Baichuan2-7B) or ALiBi added
  after the 1/sqrt(head_dim) scaling (Baichuan-13B, Baichuan2-13B, both ``BaichuanForCausalLM``);
- the LM head: Baichuan2's ``NormHead`` L2-normalises each vocabulary row, once, so it is done
  here at load time.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.models.layers.attention import Attention, local_alibi_slopes
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import get_rope, rope_parameters
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.llama import LlamaMLP
from pagedllm.models.weight_utils import load_mapped

BAICHUAN2_VOCAB = 125696


def baichuan_uses_alibi(config) -> bool:
    """For ``BaichuanForCausalLM`` (13B and Baichuan2): which position encoding the checkpoint's code uses.

    The published RoPE code sizes its table from ``max_position_embeddings``; the ALiBi code
    (and its config class) knows only ``model_max_length``. That field is the hint; without
    either, vLLM's rule: hidden size 4096 (Baichuan2-7B) is RoPE, 5120 (13B) is ALiBi. Both
    agree on the published checkpoints.
    """
    if getattr(config, "max_position_embeddings", None) is not None:
        return False
    if getattr(config, "model_max_length", None) is not None:
        return True
    return config.hidden_size != 4096


def baichuan_norm_head(config) -> bool:
    """Baichuan2 (``NormHead``): its 125696-token vocabulary (how vLLM and llama.cpp tell it from
    Baichuan 1), or its config class's ``z_loss_weight``, which Baichuan 1's does not have."""
    return config.vocab_size == BAICHUAN2_VOCAB or hasattr(config, "z_loss_weight")


class BaichuanAttention(nn.Module):
    def __init__(self, config, max_position: int, alibi: bool):
        super().__init__()
        heads = config.num_attention_heads
        self.head_dim = config.hidden_size // heads
        self.W_pack = QKVParallelLinear(config.hidden_size, self.head_dim, heads, heads)
        self.nh = self.W_pack.num_heads
        self.o_proj = RowParallelLinear(config.hidden_size, config.hidden_size)
        self.rotary_emb = None if alibi else get_rope(self.head_dim, self.head_dim, max_position,
                                                       rope_parameters(config))
        slopes = local_alibi_slopes(heads, self.nh) if alibi else None
        self.attn = Attention(self.nh, self.head_dim, self.head_dim ** -0.5, self.nh, alibi_slopes=slopes)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.W_pack(hidden).split(self.nh * self.head_dim, dim=-1)
        if self.rotary_emb is not None:
            T = hidden.shape[0]
            q, k = self.rotary_emb(positions, q.view(T, self.nh, self.head_dim), k.view(T, self.nh, self.head_dim))
        return self.o_proj(self.attn(q, k, v))


class BaichuanDecoderLayer(nn.Module):
    def __init__(self, config, max_position: int, alibi: bool):
        super().__init__()
        self.self_attn = BaichuanAttention(config, max_position, alibi)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual):
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class BaichuanModel(nn.Module):
    def __init__(self, config, max_position: int, alibi: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            BaichuanDecoderLayer(config, max_position, alibi) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return self.norm(hidden, residual)[0]


class _BaichuanBase(nn.Module):
    def __init__(self, config, max_position: int | None, alibi: bool):
        super().__init__()
        self.config = config
        max_position = max_position or getattr(config, "max_position_embeddings", None) \
            or getattr(config, "model_max_length", None) or 4096
        self.alibi = alibi
        self.norm_head = baichuan_norm_head(config)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.model = BaichuanModel(config, max_position, alibi)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if self.tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def mapper(name: str, tensor: torch.Tensor):
            if "rotary_emb.inv_freq" in name or (self.tied and name == "lm_head.weight"):
                return
            if ".W_pack." in name:  # rows are [q | k | v], one hidden size each
                yield from ((name, part, s) for part, s in zip(tensor.chunk(3, dim=0), "qkv"))
            elif ".gate_proj." in name:
                yield name.replace(".gate_proj.", ".gate_up_proj."), tensor, 0
            elif ".up_proj." in name:
                yield name.replace(".up_proj.", ".gate_up_proj."), tensor, 1
            elif name == "lm_head.weight" and self.norm_head:
                yield name, F.normalize(tensor.float(), dim=-1).to(tensor.dtype), None
            else:
                yield name, tensor, None

        return load_mapped(self, weights, mapper)


class BaiChuanForCausalLM(_BaichuanBase):
    """Baichuan-7B (capital C in the published class name): RoPE."""

    def __init__(self, config, max_position: int | None = None):
        super().__init__(config, max_position, alibi=False)


class BaichuanForCausalLM(_BaichuanBase):
    """Baichuan-13B and Baichuan2-7B/13B: RoPE or ALiBi, see ``baichuan_uses_alibi``."""

    def __init__(self, config, max_position: int | None = None):
        super().__init__(config, max_position, alibi=baichuan_uses_alibi(config))
