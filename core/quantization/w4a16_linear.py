"""The GPTQ/AWQ linear method (vLLM's ``GPTQLinearMethod``/``AWQLinearMethod``, one class here).

A layer's checkpoint tensors (``qweight``, ``qzeros``, ``scales`` and GPTQ's ``g_idx``) arrive per
shard (q/k/v, gate/up are separate in the checkpoint and fused here); each shard is unpacked into
the shared ``W4A16Weight`` layout after loading, and shards whose input columns are grouped alike
(always, except GPTQ desc_act shards with different orders) are stacked into one matrix.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.layers.linear import LinearMethod
from pagedllm.quantization.gguf_linear import shard_rows
from pagedllm.quantization.w4a16_config import W4A16Config
from pagedllm.quantization.w4a16_format import unpack_awq, unpack_gptq
from pagedllm.quantization.w4a16_weight import W4A16Weight


PACKED_NAMES = ("qweight", "qzeros", "scales")  # what every quantized layer has in the checkpoint
# GPTQ's g_idx is optional (checkpoints without desc_act may lack it: each column's group is then
# column // group_size); it reaches the method through ``keep``, not a parameter, so that its absence is no
# missing weight.


class W4A16LinearMethod(LinearMethod):
    """Keeps a layer's GPTQ or AWQ weight packed (``weights``) and multiplies by it."""

    def __init__(self, config: W4A16Config, name: str = ""):
        self.config = config
        self.name = name  # the layer's name in the model, for messages
        self.received: dict[object, dict[str, torch.Tensor]] = {}  # shard -> tensor name -> tensor
        self.weights: list[W4A16Weight] | None = None  # shards stacked where their columns are grouped alike
        self.input_size = self.output_size = 0

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        """Placeholders named as the checkpoint's tensors; their loaders keep what arrives. A bias the
        layer already has stays a dense parameter."""
        self.input_size, self.output_size = input_size, output_size
        if hasattr(layer, "weight"):
            del layer.weight
        for name in PACKED_NAMES:
            param = nn.Parameter(torch.empty(0, dtype=torch.int32), requires_grad=False)
            param.weight_loader = self._keeper(layer, name)
            layer.register_parameter(name, param)
        if bias and getattr(layer, "bias", None) is None:
            layer.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader

    def keep(self, layer: nn.Module, name: str, loaded: torch.Tensor, shard=None) -> None:
        """Keep one checkpoint tensor of a shard until all have arrived (unpacked after loading)."""
        shard_rows(layer, shard, self.output_size)  # an unknown shard is refused here
        self.received.setdefault(shard, {})[name] = loaded

    def _keeper(self, layer: nn.Module, name: str):
        return lambda param, loaded, shard=None: self.keep(layer, name, loaded, shard)

    def _unpack(self, layer: nn.Module, shard, tensors: dict[str, torch.Tensor]) -> tuple[int, W4A16Weight]:
        cfg = self.config
        start, rows = shard_rows(layer, shard, self.output_size)
        what = f"{cfg.method} layer {self.name or type(layer).__name__}"
        what += "" if shard is None else f" shard {shard!r}"
        missing = [n for n in PACKED_NAMES if n not in tensors]
        if cfg.method == "gptq" and cfg.desc_act and "g_idx" not in tensors:
            missing.append("g_idx (desc_act=True needs each column's group)")
        if missing:
            raise ValueError(f"{what}: the checkpoint lacks {', '.join(missing)}")
        if cfg.method == "gptq":
            unpacked = unpack_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors.get("g_idx"),
                                   cfg.bits, cfg.group_size, cfg.zero_offset, what)
        else:
            unpacked = unpack_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"], cfg.group_size, what)
        codes = unpacked[0]
        if tuple(codes.shape) != (rows, self.input_size):
            raise ValueError(f"{what}: qweight holds a [{codes.shape[0]}, {codes.shape[1]}] weight; the layer needs "
                             f"[{rows}, {self.input_size}]")
        return start, W4A16Weight.from_unpacked(*unpacked, bits=cfg.bits)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.weights is not None:
            return
        parts = sorted((self._unpack(layer, shard, t) for shard, t in self.received.items()), key=lambda p: p[0])
        joined: list[tuple[int, W4A16Weight]] = []
        next_row = 0
        for start, weight in parts:
            if start != next_row:
                raise ValueError(f"{type(layer).__name__}: quantized shards leave rows {next_row}..{start} unloaded")
            next_row = start + weight.rows
            if joined and joined[-1][1].same_columns(weight):
                first, last = joined.pop()
                weight, start = W4A16Weight.stack([last, weight]), first
            joined.append((start, weight))
        if next_row != self.output_size:
            raise ValueError(f"{type(layer).__name__}: quantized tensors cover {next_row} of {self.output_size} rows")
        self.weights, self.received = [weight for _, weight in joined], {}
        for i, weight in enumerate(self.weights):  # buffers: counted with the model's tensors, moved with it
            for j, tensor in enumerate(weight.tensors()):
                layer.register_buffer(f"w4a16_{i}_{j}", tensor, persistent=False)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            self.process_weights_after_loading(layer)
        x2 = x.reshape(-1, self.input_size)
        bias = getattr(layer, "bias", None)
        if len(self.weights) == 1 and bias is None:  # the usual layer: the kernel may write x's dtype itself
            return self.weights[0].matmul(x2, x.dtype).to(x.dtype).view(*x.shape[:-1], self.output_size)
        outs = [w.matmul(x2) for w in self.weights]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if bias is not None:
            out = out + bias
        return out.to(x.dtype).view(*x.shape[:-1], self.output_size)
