"""The LoRA linear method: a layer's own method, plus each slot's adapter delta on its output.

It wraps the layer's method (dense, prepacked bf16, later quantized ones) instead of replacing it,
so base weights stay where and how they are. Each slot holds one adapter as ``lora_a`` [R, in] and
``lora_b`` [out, R] with R = ``max_lora_rank`` per part of the layer (q, k, v of ``qkv_proj``; gate,
up of ``gate_up_proj``): a fused layer's parts are adapted separately, each rank block writing only
its rows of B (vLLM's sliced LoRA layers, as one block-structured pair).
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.forward_context import get_lora_mapping
from pagedllm.lora.punica import add_lora
from pagedllm.models.layers.linear import (LinearBase, LinearMethod, MergedColumnParallelLinear,
                                           QKVParallelLinear)

# The native layers adapters may target: attention q/k/v/o, gated MLP gate/up/down, plain MLP in/out.
LORA_LAYER_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "fc_in", "fc_out")


class LoRALinearMethod(LinearMethod):
    def __init__(self, base: LinearMethod, layer: LinearBase, max_loras: int, max_lora_rank: int,
                 dtype: torch.dtype, device: torch.device):
        self.base = base
        self.input_size, self.output_size = layer.input_size, layer.output_size
        if isinstance(layer, QKVParallelLinear):
            q, kv = layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim
            self.shards = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}
        elif isinstance(layer, MergedColumnParallelLinear):
            starts = [sum(layer.output_sizes[:i]) for i in range(len(layer.output_sizes))]
            self.shards = {i: (s, n) for i, (s, n) in enumerate(zip(starts, layer.output_sizes))}
        else:
            self.shards = {None: (0, self.output_size)}
        self.num_shards = len(self.shards)
        self.max_columns = max_lora_rank * self.num_shards
        self.lora_a = torch.zeros(max_loras, self.max_columns, self.input_size, dtype=dtype, device=device)
        self.lora_b = torch.zeros(max_loras, self.output_size, self.max_columns, dtype=dtype, device=device)
        self.columns = [0] * max_loras  # rank columns slot s uses in this layer (0: not adapted)
        # the same on the GPU, for the SGMV kernels (kept in step with ``columns``, never copied per call)
        self.columns_device = (torch.zeros(max_loras, dtype=torch.int32, device=device)
                               if torch.device(device).type == "cuda" else None)

    def shard_rows(self, shard) -> tuple[int, int]:
        """(first output row, rows) of a checkpoint shard (``q``/``k``/``v``, 0/1, or None: all)."""
        if shard is None and None not in self.shards:
            return 0, self.output_size  # a fused checkpoint tensor covering the whole layer
        return self.shards[shard]

    # --- slots --------------------------------------------------------------------------------
    def set_slot(self, slot: int, pieces) -> None:
        """Write an adapter's pieces for this layer (``peft_adapter.LayerPiece``) into ``slot``."""
        self.clear_slot(slot)
        column = 0
        for piece in pieces:
            r = piece.a.shape[0]
            self.lora_a[slot, column:column + r].copy_(piece.a)
            for row, b in piece.b_rows:
                self.lora_b[slot, row:row + b.shape[0], column:column + r].copy_(b)
            column += r
        self._set_columns(slot, column)

    def _set_columns(self, slot: int, column: int) -> None:
        self.columns[slot] = column
        if self.columns_device is not None:
            self.columns_device[slot] = column

    def clear_slot(self, slot: int) -> None:
        if self.columns[slot]:
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()
        self._set_columns(slot, 0)

    # --- LinearMethod ---------------------------------------------------------------------------
    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        self.base.create_weights(layer, input_size, output_size, bias)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        self.base.process_weights_after_loading(layer)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = self.base.apply(layer, x)
        mapping = get_lora_mapping()
        if mapping is None or not mapping.segments:
            return out
        return add_lora(out, x, self.lora_a, self.lora_b, self.columns, mapping, self.columns_device)


def wrap_lora_layers(model: nn.Module, max_loras: int, max_lora_rank: int, dtype: torch.dtype,
                     device: torch.device) -> dict[str, LoRALinearMethod]:
    """Give every adaptable projection of ``model`` a LoRA method around its own; name -> method."""
    wrapped = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and name.rsplit(".", 1)[-1] in LORA_LAYER_NAMES:
            if not isinstance(module.linear_method, LoRALinearMethod):
                module.linear_method = LoRALinearMethod(module.linear_method, module, max_loras, max_lora_rank,
                                                        dtype, device)
            wrapped[name] = module.linear_method
    return wrapped
