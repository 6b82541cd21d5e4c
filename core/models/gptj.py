"""GPT-J: interleaved (GPT-J style) partial rotary, attention and MLP in parallel on one LayerNorm."""
from __future__ import annotations

from pagedllm.models.causal_lm import QKV_SHARDS
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding
from pagedllm.models.parallel_residual import BlockShape, ParallelResidualLM


class GPTJForCausalLM(ParallelResidualLM):
    head_bias = True
    skipped_suffixes = (".attn.bias", ".attn.masked_bias", "embed_positions")
    renames = (("transformer.wte.", "model.embed_tokens."), ("transformer.h.", "model.layers."),
               ("transformer.ln_f.", "model.norm."), (".ln_1.", ".input_layernorm."),
               (".attn.out_proj.", ".self_attn.o_proj."), (".attn.", ".self_attn."))
    packed_modules_mapping = QKV_SHARDS

    def block_shape(self, config) -> BlockShape:
        return BlockShape("shared", config.layer_norm_epsilon, config.n_inner or 4 * config.hidden_size,
                          config.activation_function)

    def attention(self, config, layer_idx: int, max_position: int) -> QKVAttention:
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        # GPT-J's sinusoid table is fixed at base 10000 (no rope settings in its config).
        rotary = RotaryEmbedding(head_dim, config.rotary_dim or head_dim, max_position,
                                 {"rope_type": "default", "rope_theta": 10000.0}, is_neox_style=False)
        return QKVAttention(config.hidden_size, heads, heads, head_dim, rotary_emb=rotary)
