"""The fp8 linear method (vLLM's ``Fp8LinearMethod``): e4m3fn weights, one float32 scale per output row.

A layer's weight arrives per shard (q/k/v, gate/up are separate in most checkpoints and fused here), each
through the layer's own ``weight_loader`` (tensor-parallel slicing, fused-row placement) into a buffer
of this layer only; once every row has arrived the buffer becomes an ``Fp8Weight`` and is dropped. So a
dense checkpoint is quantized one layer at a time (vLLM's online fp8) and never resident as a whole,
and an fp8 checkpoint's bytes are placed as they are. A per-tensor checkpoint scale becomes the scale
of every row of its shard (exact: no requantization, unlike vLLM's max over shards).
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.layers.linear import LinearMethod, MergedColumnParallelLinear, QKVParallelLinear
from pagedllm.quantization.fp8_config import Fp8Config
from pagedllm.quantization.fp8_weight import Fp8Weight


def local_rows(layer: nn.Module, shard) -> tuple[int, int]:
    """(first row, rows) of a checkpoint shard in this rank's part of ``layer``'s output."""
    if shard is None:
        return 0, layer.output_size
    if isinstance(layer, QKVParallelLinear):
        q, kv = layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard]
    if isinstance(layer, MergedColumnParallelLinear):
        return sum(layer.output_sizes[:shard]) // layer.tp_size, layer.output_sizes[shard] // layer.tp_size
    raise ValueError(f"shard={shard!r} given for {type(layer).__name__}, which has no shards")


class Fp8LinearMethod(LinearMethod):
    """Holds a layer's ``Fp8Weight`` (as the parameters ``weight`` and ``weight_scale``) and multiplies by it."""

    pending_bytes = 0  # bytes of dense/fp8 buffers of layers not yet complete, over all layers (the tests
    peak_pending_bytes = 0  # read the peak: loading is one layer at a time, not a dense model resident)

    def __init__(self, config: Fp8Config, name: str = ""):
        self.config = config
        self.name = name  # the layer's name in the model, for messages
        self.input_size = self.output_size = 0
        self.buffer: torch.Tensor | None = None  # rows received so far (float32 online, e4m3fn serialized)
        self.scale_buffer: torch.Tensor | None = None  # serialized: float32 [out, 1]
        self.rows: dict[str, set] = {"weight": set(), "weight_scale": set()}  # shards received
        self.weight: Fp8Weight | None = None
        self.device = torch.device("cpu")  # where the layer's weight lives once quantized
        self.row_amax: torch.Tensor | None = None  # row-parallel ranks: each whole row's amax (online)

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        """Replace the layer's dense ``weight`` (never filled, so never resident) by an empty placeholder whose
        loader fills this layer's buffer; a bias the layer has stays a dense parameter."""
        self.input_size, self.output_size = input_size, output_size
        self.device = layer.weight.device if getattr(layer, "weight", None) is not None else torch.device("cpu")
        if hasattr(layer, "weight"):
            del layer.weight
        names = ("weight", "weight_scale") if self.config.serialized else ("weight",)
        for name in names:
            param = nn.Parameter(torch.empty(0, dtype=torch.float8_e4m3fn if name == "weight" else torch.float32),
                                 requires_grad=False)
            param.weight_loader = self._loader(layer, name)
            layer.register_parameter(name, param)
        if bias and getattr(layer, "bias", None) is None:
            layer.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader

    def _what(self, shard=None) -> str:
        return f"fp8 layer {self.name or '?'}" + ("" if shard is None else f" shard {shard!r}")

    def _loader(self, layer: nn.Module, name: str):
        def load(param: nn.Parameter, loaded: torch.Tensor, shard=None) -> None:
            if self.weight is not None:
                raise ValueError(f"{self._what(shard)}: {name} loaded twice")
            if name == "weight":
                self._load_weight(layer, param, loaded, shard)
            else:
                self._load_scale(layer, param, loaded, shard)
            self.rows[name].add(shard)
            self._finish_if_complete(layer)
        return load

    def _allocate(self, shape, dtype) -> torch.Tensor:
        buffer = torch.zeros(shape, dtype=dtype)
        Fp8LinearMethod.pending_bytes += buffer.numel() * buffer.element_size()
        Fp8LinearMethod.peak_pending_bytes = max(Fp8LinearMethod.peak_pending_bytes, Fp8LinearMethod.pending_bytes)
        return buffer

    def _through_layer(self, layer: nn.Module, param: nn.Parameter, buffer: torch.Tensor, loaded: torch.Tensor,
                       shard) -> None:
        """The layer's own loader places the (sliced) rows into ``buffer``, as it would into a dense weight."""
        empty = param.data
        param.data = buffer
        try:
            layer.weight_loader(param, loaded) if shard is None else layer.weight_loader(param, loaded, shard)
        finally:
            param.data = empty

    def _load_weight(self, layer, param, loaded: torch.Tensor, shard) -> None:
        if self.config.serialized:
            if loaded.dtype != torch.float8_e4m3fn:
                raise ValueError(f"{self._what(shard)}: the checkpoint's weight is {loaded.dtype}; an fp8 checkpoint "
                                 "stores float8_e4m3fn weights (with a weight_scale)")
        elif loaded.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"{self._what(shard)}: quantization='fp8' quantizes float32/bf16/fp16 weights; the "
                             f"checkpoint's weight is {loaded.dtype}")
        if self.buffer is None:
            dtype = torch.float8_e4m3fn if self.config.serialized else torch.float32
            self.buffer = self._allocate((self.output_size, self.input_size), dtype)
        if not self.config.serialized and layer.tp_dim == 1 and layer.tp_size > 1 and loaded.dim() == 2:
            # a row-parallel rank holds a slice of each row: scale by the whole row's amax, so every rank
            # quantizes as one rank would (tensor_parallel_size changes no weight)
            self.row_amax = loaded.detach().abs().amax(dim=1).to(torch.float32)
        self._through_layer(layer, param, self.buffer, loaded, shard)

    def _load_scale(self, layer, param, loaded: torch.Tensor, shard) -> None:
        if self.scale_buffer is None:
            self.scale_buffer = self._allocate((self.output_size, 1), torch.float32)
        start, rows = local_rows(layer, shard)
        if loaded.numel() == 1:  # per tensor: every row of this shard
            self.scale_buffer[start:start + rows] = loaded.reshape(()).to(torch.float32)
        elif layer.tp_dim == 1 or layer.tp_size == 1:  # per channel, not split across ranks here
            if loaded.numel() != rows:
                raise ValueError(f"{self._what(shard)}: weight_scale has {loaded.numel()} values; expected 1 (per "
                                 f"tensor) or {rows} (per output channel)")
            self.scale_buffer[start:start + rows] = loaded.reshape(rows, 1).to(torch.float32)
        else:  # per channel of a column-parallel layer: its rows are sliced as the weight's
            self._through_layer(layer, param, self.scale_buffer, loaded.reshape(-1, 1).to(torch.float32), shard)

    def _covered(self, layer, name: str) -> int:
        return sum(local_rows(layer, shard)[1] for shard in self.rows[name])

    def _finish_if_complete(self, layer: nn.Module) -> None:
        names = ("weight", "weight_scale") if self.config.serialized else ("weight",)
        if all(self._covered(layer, n) == self.output_size for n in names):
            self._finish(layer)

    def _finish(self, layer: nn.Module) -> None:
        if self.config.serialized:
            weight = Fp8Weight(self.buffer, self.scale_buffer.reshape(-1).contiguous())
        else:
            weight = Fp8Weight.quantize(self.buffer, self.row_amax)
        for buffer in (self.buffer, self.scale_buffer):
            if buffer is not None:
                Fp8LinearMethod.pending_bytes -= buffer.numel() * buffer.element_size()
        self.buffer = self.scale_buffer = None
        self.weight = weight
        layer.weight = nn.Parameter(weight.codes.to(self.device), requires_grad=False)
        layer.weight_scale = nn.Parameter(weight.scales.to(self.device), requires_grad=False)
        self.weight = Fp8Weight(layer.weight.data, layer.weight_scale.data)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Every row must have arrived (a layer the checkpoint left partly unloaded is an error, not zeros)."""
        if self.weight is not None:
            return
        names = ("weight", "weight_scale") if self.config.serialized else ("weight",)
        for name in names:
            covered = self._covered(layer, name)
            if covered != self.output_size:
                raise ValueError(f"{self._what()}: the checkpoint gave {covered} of {self.output_size} rows of "
                                 f"its {name}")

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            self.process_weights_after_loading(layer)
        out = self.weight.matmul(x.reshape(-1, self.input_size))
        bias = getattr(layer, "bias", None)
        if bias is not None:
            out = out + bias
        return out.to(x.dtype).view(*x.shape[:-1], self.output_size)
