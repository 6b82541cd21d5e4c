"""Baichuan 1 and 2 (``trust_remote_code`` checkpoints): Llama blocks with one fused ``W_pack`` q|k|v.

The published variants share their weight names and differ in two places:

- position encoding: RoPE (Baichuan-7B ``BaiChuanForCausalLM``, Baichuan2-7B) or ALiBi added
  after the 1/sqrt(head_dim) scaling (Baichuan-13B, Baichuan2-13B, both ``BaichuanForCausalLM``);
- the LM head: Baichuan2's ``NormHead`` L2-normalises each vocabulary row, once, so it is done
  here at load time.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from pagedllm.distributed import get_tp_world_size
from pagedllm.models.layers.attention import local_alibi_slopes
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import get_rope, rope_parameters
from pagedllm.models.causal_lm import stacked_shards
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.weight_utils import Target

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


class _BaichuanBase(LlamaForCausalLM):
    """The Llama block (its q|k|v checkpoint-fused as ``W_pack``), RoPE or ALiBi, plain or normed head."""

    alibi = False
    renames = ((".W_pack.", ".qkv_proj."),)

    def __init__(self, config, max_position: int | None = None):
        self.norm_head = baichuan_norm_head(config)
        super().__init__(config, max_position)

    @staticmethod
    def default_max_position(config) -> int:
        return getattr(config, "max_position_embeddings", None) or getattr(config, "model_max_length", None) or 4096

    def attention(self, config, layer_idx: int, max_position: int, **kwargs) -> QKVAttention:
        heads = config.num_attention_heads
        dim = config.hidden_size // heads
        rotary = None if self.alibi else get_rope(dim, dim, max_position, rope_parameters(config))
        slopes = local_alibi_slopes(heads, heads // get_tp_world_size()) if self.alibi else None
        return QKVAttention(config.hidden_size, heads, heads, dim, rotary_emb=rotary, alibi_slopes=slopes)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if ".qkv_proj." in name:  # W_pack rows are [q | k | v], one hidden size each
            yield from stacked_shards(name, tensor, [tensor.shape[0] // 3] * 3, "qkv")
        elif name == "lm_head.weight" and self.norm_head:
            yield name, F.normalize(tensor.float(), dim=-1).to(tensor.dtype), None
        else:
            yield from super().split_fused(name, tensor)


class BaiChuanForCausalLM(_BaichuanBase):
    """Baichuan-7B (capital C in the published class name): RoPE."""


class BaichuanForCausalLM(_BaichuanBase):
    """Baichuan-13B and Baichuan2-7B/13B: RoPE or ALiBi, see ``baichuan_uses_alibi``."""

    def __init__(self, config, max_position: int | None = None):
        self.alibi = baichuan_uses_alibi(config)
        super().__init__(config, max_position)
