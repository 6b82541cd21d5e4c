"""GPT-NeoX / Pythia: partial rotary (``rotary_pct``), parallel residual, per-head interleaved fused QKV."""
from __future__ import annotations

from typing import Iterator

import torch

from pagedllm.models.causal_lm import per_head_qkv
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, partial_rotary_factor, rope_parameters
from pagedllm.models.parallel_residual import BlockShape, ParallelResidualLM
from pagedllm.models.weight_utils import Target


class GPTNeoXForCausalLM(ParallelResidualLM):
    skipped_suffixes = (".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")
    renames = (("gpt_neox.embed_in.", "model.embed_tokens."), ("gpt_neox.layers.", "model.layers."),
               ("gpt_neox.final_layer_norm.", "model.norm."), ("embed_out.", "lm_head."),
               (".attention.query_key_value.", ".self_attn.qkv_proj."), (".attention.dense.", ".self_attn.o_proj."),
               (".mlp.dense_h_to_4h.", ".mlp.fc_in."), (".mlp.dense_4h_to_h.", ".mlp.fc_out."))

    def block_shape(self, config) -> BlockShape:
        norms = "separate" if config.use_parallel_residual else "sequential"  # HF: mlp(ln2(x)) + attn(ln1(x)) + x
        return BlockShape(norms, config.layer_norm_eps, config.intermediate_size, config.hidden_act)

    def attention(self, config, layer_idx: int, max_position: int) -> QKVAttention:
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        params = rope_parameters(config)
        if getattr(config, "rotary_emb_base", None) and not getattr(config, "rope_parameters", None):
            params["rope_theta"] = config.rotary_emb_base  # transformers 4.x name
        rotary = RotaryEmbedding(head_dim, int(head_dim * partial_rotary_factor(config, "rotary_pct")),
                                 max_position, params)
        bias = getattr(config, "attention_bias", True)
        return QKVAttention(config.hidden_size, heads, heads, head_dim, qkv_bias=bias, o_bias=bias, rotary_emb=rotary)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if ".qkv_proj." not in name:
            yield name, tensor, None
            return
        heads = self.config.num_attention_heads
        yield from zip([name] * 3, per_head_qkv(tensor, heads, self.config.hidden_size // heads), "qkv")
