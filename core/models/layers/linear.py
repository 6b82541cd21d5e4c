"""Linear layers that know how to shard across tensor-parallel ranks.

Each parameter carries a ``weight_loader`` that copies its slice of a checkpoint tensor, so
model code loads weights the same way with one worker or many (vLLM's pattern). How a layer
stores and multiplies its weight is its *linear method* (``DenseLinearMethod`` today): quantized
formats and LoRA plug in there without touching layers, loaders or models. After loading,
``prepack_for_cpu`` lets the method re-lay its weight (dense: a CPU bf16 weight packed once for
oneDNN, ``pagedllm.kernels.cpu_gemm``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import get_tp_rank, get_tp_world_size, tp_all_reduce
from pagedllm.kernels import cpu_gemm


def _divide(a: int, b: int) -> int:
    if a % b:
        raise ValueError(f"{a} is not divisible by tensor_parallel_size={b}")
    return a // b


class LinearMethod:
    """How a linear layer holds and multiplies its weight (vLLM's ``LinearMethodBase``): a method
    creates the layer's parameters, applies them to an input, and may re-lay them once loaded."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        raise NotImplementedError

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        pass


class DenseLinearMethod(LinearMethod):
    """A float ``weight`` [out, in] and optional ``bias``; on CPU in bf16 the weight is packed once
    for oneDNN after loading and the plain copy dropped, as vLLM's CPU backend does (``cpu_gemm``)."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, bias: bool) -> None:
        layer.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        layer.weight.weight_loader = layer.weight_loader
        if bias:
            layer.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader
        else:
            layer.register_parameter("bias", None)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if layer.packed_weight is not None:
            return cpu_gemm.linear(x, layer.packed_weight, layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        cpu_gemm.prepack(layer)


class LinearBase(nn.Module):
    packed_weight = None  # set by DenseLinearMethod.process_weights_after_loading on CPU bf16

    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: int | None,
                 linear_method: LinearMethod | None = None):
        super().__init__()
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_world_size()
        self.tp_dim = tp_dim
        self.input_size, self.output_size = input_size, output_size  # this rank's (the weight may be prepacked away)
        self.linear_method = linear_method or DenseLinearMethod()
        self.linear_method.create_weights(self, input_size, output_size, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if self.tp_dim is not None and self.tp_size > 1 and loaded.dim() > self.tp_dim:
            shard = param.size(self.tp_dim)
            loaded = loaded.narrow(self.tp_dim, self.tp_rank * shard, shard)
        param.data.copy_(loaded)

    def prepack_for_cpu(self) -> None:
        """Called by the model runner once weights are loaded (and by tests)."""
        self.linear_method.process_weights_after_loading(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 linear_method: LinearMethod | None = None):
        super().__init__(input_size, output_size, bias, tp_dim=None, linear_method=linear_method)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication in forward."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 linear_method: LinearMethod | None = None):
        super().__init__(input_size, _divide(output_size, get_tp_world_size()), bias, tp_dim=0,
                         linear_method=linear_method)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused in one matmul (e.g. gate+up)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 linear_method: LinearMethod | None = None):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, linear_method)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        target = param.data.narrow(0, offset, size)
        target.copy_(loaded.narrow(0, self.tp_rank * size, size) if self.tp_size > 1 else loaded)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; KV heads are split (or replicated) across ranks."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 linear_method: LinearMethod | None = None):
        tp = get_tp_world_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp)
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        output = (num_heads + 2 * self.num_kv_heads * tp) * head_dim
        super().__init__(hidden_size, output, bias, linear_method)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}[shard_id]
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        if self.tp_size > 1:
            loaded = loaded.narrow(0, rank * size, size)
        param.data.narrow(0, offset, size).copy_(loaded)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial results are summed (all-reduce)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 linear_method: LinearMethod | None = None):
        super().__init__(_divide(input_size, get_tp_world_size()), output_size, bias, tp_dim=1,
                         linear_method=linear_method)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if param.dim() == 1:  # bias: applied once, on rank 0
            param.data.copy_(loaded if self.tp_rank == 0 else torch.zeros_like(loaded))
            return
        super().weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tp_all_reduce(self.linear_method.apply(self, x))
