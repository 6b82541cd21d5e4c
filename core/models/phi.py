"""Phi (phi-1, phi-1.5, phi-2): partial rotary, a parallel attention+MLP block on one LayerNorm, biased head."""
from __future__ import annotations

from functools import partial

from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, partial_rotary_factor, rope_parameters
from pagedllm.models.causal_lm import QKV_SHARDS
from pagedllm.models.llama import head_dim, num_kv_heads
from pagedllm.models.parallel_residual import BlockShape, ParallelResidualLM


class PhiForCausalLM(ParallelResidualLM):
    head_bias = True
    renames = (("model.final_layernorm.", "model.norm."), (".self_attn.dense.", ".self_attn.o_proj."),
               (".q_layernorm.", ".q_norm."), (".k_layernorm.", ".k_norm."),
               (".mlp.fc1.", ".mlp.fc_in."), (".mlp.fc2.", ".mlp.fc_out."))
    packed_modules_mapping = QKV_SHARDS

    def block_shape(self, config) -> BlockShape:
        return BlockShape("shared", config.layer_norm_eps, config.intermediate_size, config.hidden_act)

    def attention(self, config, layer_idx: int, max_position: int) -> QKVAttention:
        dim = head_dim(config)
        rotary = RotaryEmbedding(dim, int(dim * partial_rotary_factor(config)), max_position, rope_parameters(config))
        qk_norm = partial(LayerNorm, eps=config.layer_norm_eps) if config.qk_layernorm else None
        return QKVAttention(config.hidden_size, config.num_attention_heads, num_kv_heads(config), dim,
                            qkv_bias=True, o_bias=True, rotary_emb=rotary, qk_norm=qk_norm)
