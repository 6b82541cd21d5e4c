"""Qwen3: the Llama block with per-head RMSNorm on q and k (before RoPE), and an explicit head_dim."""
from __future__ import annotations

from functools import partial

from pagedllm.models.layers.attention import layer_sliding_window
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        return bool(getattr(config, "attention_bias", False)), False

    def attention(self, config, layer_idx: int, max_position: int, **kwargs) -> QKVAttention:
        legacy = bool(getattr(config, "use_sliding_window", False)) and layer_idx >= getattr(
            config, "max_window_layers", 0)
        return super().attention(config, layer_idx, max_position, qk_norm=partial(RMSNorm, eps=config.rms_norm_eps),
                                 sliding_window=layer_sliding_window(config, layer_idx, legacy))
