"""Phi-3 / Phi-4-mini: the Llama block with checkpoint-fused ``qkv_proj``/``gate_up_proj`` and partial rotary."""
from __future__ import annotations

from typing import Iterator

import torch

from pagedllm.models.causal_lm import stacked_shards
from pagedllm.models.llama import LlamaForCausalLM, head_dim, num_kv_heads
from pagedllm.models.weight_utils import Target


class Phi3ForCausalLM(LlamaForCausalLM):
    """The Llama block; partial rotary and longrope come through the shared rotary layer."""

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        """The checkpoint's fused rows (all q, k, v heads; gate then up) into our shards."""
        if ".qkv_proj." in name:
            q_size = self.config.num_attention_heads * head_dim(self.config)
            kv_size = num_kv_heads(self.config) * head_dim(self.config)
            yield from stacked_shards(name, tensor, [q_size, kv_size, kv_size], "qkv")
        elif ".gate_up_proj." in name:
            yield from stacked_shards(name, tensor, [tensor.shape[0] // 2] * 2, (0, 1))
        else:
            yield name, tensor, None
