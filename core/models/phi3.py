"""Phi-3 / Phi-4-mini: the Llama block with checkpoint-fused ``qkv_proj``/``gate_up_proj`` and partial rotary."""
from __future__ import annotations

from typing import Iterable

import torch

from pagedllm.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    """The Llama block; partial rotary and longrope come through the shared rotary layer."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Split the checkpoint's fused rows into Llama's q/k/v and gate/up names (our shards)."""
        attn = self.model.layers[0].self_attn
        q_size = attn.num_heads * attn.head_dim * attn.qkv_proj.tp_size
        kv_size = attn.num_kv_heads * attn.head_dim * attn.qkv_proj.tp_size

        def split(items):
            for name, tensor in items:
                if ".qkv_proj." in name:
                    for frag, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q_size, kv_size, kv_size])):
                        yield name.replace("qkv_proj", frag), part
                elif ".gate_up_proj." in name:
                    for frag, part in zip(("gate_proj", "up_proj"), tensor.chunk(2, dim=0)):
                        yield name.replace("gate_up_proj", frag), part
                else:
                    yield name, tensor

        return super().load_weights(split(weights))
