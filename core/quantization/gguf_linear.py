"""The GGUF linear method (vLLM's ``GGUFLinearMethod``) and the GGUF embedding lookup.

A layer's weight arrives as one or more GGUF tensors (a fused q|k|v or gate|up layer gets one per
shard, each possibly of another type in a mixed file). They are kept as loaded; after loading,
neighbouring shards of one type are joined into one block matrix, so the usual file (every shard
one type) runs one kernel call per layer. Shards of different types run one call each, and their
outputs are concatenated. The embeddings keep their blocks too: a lookup dequantizes only the rows
it reads, and a tied LM head multiplies by the same blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.layers.linear import LinearMethod, MergedColumnParallelLinear, QKVParallelLinear
from pagedllm.quantization.gguf_weight import GGUFWeight


def shard_rows(layer: nn.Module, shard, output_size: int) -> tuple[int, int]:
    """(first output row, rows) of a checkpoint shard: ``q``/``k``/``v``, a gate/up index, or None (all)."""
    if shard is None:
        return 0, output_size
    if isinstance(layer, QKVParallelLinear):
        q, kv = layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard]
    if isinstance(layer, MergedColumnParallelLinear):
        return sum(layer.output_sizes[:shard]), layer.output_sizes[shard]
    raise ValueError(f"shard={shard!r} given for {type(layer).__name__}, which has no shards")


class GGUFLinearMethod(LinearMethod):
    """Holds a layer's GGUF tensors (``parts``: (first row, weight)) and multiplies by them in place."""

    def __init__(self):
        self.parts: list[tuple[int, GGUFWeight]] = []
        self.weights: list[GGUFWeight] | None = None  # the joined parts, after loading
        self.input_size = self.output_size = 0
        self.dtype = torch.float32

    @classmethod
    def of(cls, weight: GGUFWeight, dtype: torch.dtype) -> "GGUFLinearMethod":
        """A method over one loaded tensor (the LM head tied to GGUF embeddings)."""
        method = cls()
        method.input_size, method.output_size, method.dtype = weight.cols, weight.rows, dtype
        method.parts = [(0, weight)]
        return method

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        """Replaces the layer's float ``weight`` by an empty placeholder whose loader keeps GGUF tensors; a
        bias the layer already has stays a dense parameter."""
        self.input_size, self.output_size = input_size, output_size
        self.dtype = torch.get_default_dtype()
        layer.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        layer.weight.weight_loader = lambda param, loaded, shard=None: self.load(layer, loaded, shard)
        layer.weight.gguf_loader = True
        if bias and getattr(layer, "bias", None) is None:
            layer.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader

    def load(self, layer: nn.Module, loaded, shard=None) -> None:
        weight = loaded if isinstance(loaded, GGUFWeight) else GGUFWeight.dense(loaded)
        start, rows = shard_rows(layer, shard, self.output_size)
        if (weight.rows, weight.cols) != (rows, self.input_size):
            raise ValueError(f"GGUF tensor {weight.name!r} is [{weight.rows}, {weight.cols}]; the layer's shard "
                             f"{shard!r} needs [{rows}, {self.input_size}]")
        weight.check_kernel()
        self.parts.append((start, weight))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.weights is not None:
            return
        joined: list[GGUFWeight] = []
        next_row = 0
        for start, w in sorted(self.parts, key=lambda p: p[0]):
            if start != next_row:
                raise ValueError(f"{type(layer).__name__}: GGUF shards leave rows {next_row}..{start} unloaded")
            next_row = start + w.rows
            if not w.quantized:
                w = GGUFWeight(w.data.to(self.dtype).contiguous(), w.qtype, w.rows, w.cols, w.name)
            if joined and joined[-1].qtype == w.qtype:  # same type: one block matrix, one kernel call
                last = joined.pop()
                w = GGUFWeight(torch.cat([last.data, w.data]), w.qtype, last.rows + w.rows, w.cols, last.name)
            joined.append(w)
        if next_row != self.output_size:
            raise ValueError(f"{type(layer).__name__}: GGUF tensors cover {next_row} of {self.output_size} rows")
        self.weights, self.parts = joined, []
        for i, w in enumerate(joined):  # buffers: counted with the model's tensors, moved with it
            layer.register_buffer(f"gguf_weight_{i}", w.data, persistent=False)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            self.process_weights_after_loading(layer)
        x2 = x.reshape(-1, self.input_size)
        bias = getattr(layer, "bias", None)
        if len(self.weights) == 1 and bias is None:  # the usual layer: the kernel may write x's dtype itself
            return self.weights[0].matmul(x2, x.dtype).view(*x.shape[:-1], self.output_size)
        outs = [w.matmul(x2) for w in self.weights]
        out = outs[0] if len(outs) == 1 else torch.cat([o.to(x.dtype) for o in outs], dim=-1)
        if bias is not None:
            out = out + bias
        return out.to(x.dtype).view(*x.shape[:-1], self.output_size)


class GGUFEmbedding(nn.Module):
    """Token embeddings from a GGUF tensor: a lookup is not a matmul, so only the rows read are
    dequantized (to the model's dtype); the blocks stay as they are for a tied LM head."""

    def __init__(self, weight: GGUFWeight, dtype: torch.dtype):
        super().__init__()
        self.weight_data = weight
        self.num_embeddings, self.embedding_dim = weight.rows, weight.cols
        self.dtype = dtype
        self.register_buffer("gguf_weight", weight.data, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.weight_data.take_rows(input_ids).to(self.dtype)
