"""Falcon (7B-style multi-query, 40B/180B-style grouped "new decoder architecture", plain MHA).

Each variant lays its fused QKV rows out differently; they are split into q/k/v shards at load
time so the forward pass is one layout. ALiBi checkpoints (falcon-rw, ``alibi=True``) have no
rotary embedding; their bias is added before the 1/sqrt(head_dim) scaling in the reference code,
so the slopes handed to the attention layer are divided by it.
"""
from __future__ import annotations

from typing import Iterator

import torch

from pagedllm.distributed import get_tp_world_size
from pagedllm.models.causal_lm import per_head_qkv
from pagedllm.models.layers.attention import local_alibi_slopes
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, rope_parameters
from pagedllm.models.parallel_residual import BlockShape, ParallelResidualLM
from pagedllm.models.weight_utils import Target


def _num_kv_heads(config) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _split_qkv(config, tensor: torch.Tensor):
    """The q, k, v row blocks of Falcon's fused ``query_key_value`` (weight or bias)."""
    heads, kv = config.num_attention_heads, _num_kv_heads(config)
    d = config.hidden_size // heads
    rest = tensor.shape[1:]
    if config.new_decoder_architecture:  # [kv group, (q heads of the group | k | v), d]
        t = tensor.view(kv, heads // kv + 2, d, *rest)
        return (t[:, :-2].reshape(heads * d, *rest), t[:, -2].reshape(kv * d, *rest),
                t[:, -1].reshape(kv * d, *rest))
    if not config.multi_query:  # [head, (q|k|v), d]
        return per_head_qkv(tensor, heads, d)
    return tensor.split([heads * d, d, d], dim=0)


def _bf16(slopes: list[float]) -> list[float]:
    """Falcon's reference code rounds its ALiBi slopes to bfloat16 (a no-op up to 8 heads, not for 32)."""
    return torch.tensor(slopes, dtype=torch.float32).bfloat16().float().tolist()


class FalconForCausalLM(ParallelResidualLM):
    tie_by_default = True
    skipped_suffixes = ()
    renames = (("transformer.word_embeddings.", "model.embed_tokens."), ("transformer.h.", "model.layers."),
               ("transformer.ln_f.", "model.norm."), (".self_attention.query_key_value.", ".self_attn.qkv_proj."),
               (".self_attention.dense.", ".self_attn.o_proj."), (".ln_attn.", ".input_layernorm."),
               (".ln_mlp.", ".post_attention_layernorm."),
               (".mlp.dense_h_to_4h.", ".mlp.fc_in."), (".mlp.dense_4h_to_h.", ".mlp.fc_out."))

    def block_shape(self, config) -> BlockShape:
        num_ln = config.num_ln_in_parallel_attn or (2 if config.new_decoder_architecture else 1)
        if config.new_decoder_architecture:
            norms = "separate" if num_ln == 2 else "shared"
        else:
            norms = "shared" if config.parallel_attn else "sequential"
        return BlockShape(norms, config.layer_norm_epsilon,
                          getattr(config, "ffn_hidden_size", None) or 4 * config.hidden_size,
                          getattr(config, "activation", None) or "gelu", mlp_bias=config.bias)

    def attention(self, config, layer_idx: int, max_position: int) -> QKVAttention:
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        scale = head_dim ** -0.5
        rotary = slopes = None
        if config.alibi:
            local = heads // get_tp_world_size()
            slopes = [s * scale for s in _bf16(local_alibi_slopes(heads, local))]
        else:
            rotary = RotaryEmbedding(head_dim, head_dim, max_position, rope_parameters(config))
        return QKVAttention(config.hidden_size, heads, _num_kv_heads(config), head_dim, qkv_bias=config.bias,
                            o_bias=config.bias, rotary_emb=rotary, scale=scale, alibi_slopes=slopes)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if ".qkv_proj." in name:
            yield from ((name, part, s) for part, s in zip(_split_qkv(self.config, tensor), "qkv"))
        else:
            yield name, tensor, None
