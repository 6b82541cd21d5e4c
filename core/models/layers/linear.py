"""Linear layers that know how to shard across tensor-parallel ranks.

Each parameter carries a ``weight_loader`` that copies its slice of a checkpoint tensor, so
model code loads weights the same way with one worker or many (vLLM's pattern). After loading,
``prepack_for_cpu`` swaps a CPU bf16 weight for a oneDNN-packed one (``pagedllm.kernels.cpu_gemm``).
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


class PrepackedMatmul:
    """``x @ weight.T + bias`` for a module with ``weight`` and ``bias``, through the oneDNN-packed
    weight once ``prepack_for_cpu`` made one (after loading, CPU bf16; the plain copy is dropped,
    as vLLM's CPU backend does, see ``cpu_gemm``)."""

    packed_weight = None

    def prepack_for_cpu(self) -> None:
        cpu_gemm.prepack(self)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is not None:
            return cpu_gemm.linear(x, self.packed_weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class LinearBase(PrepackedMatmul, nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: int | None):
        super().__init__()
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_world_size()
        self.tp_dim = tp_dim
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if self.tp_dim is not None and self.tp_size > 1 and loaded.dim() > self.tp_dim:
            shard = param.size(self.tp_dim)
            loaded = loaded.narrow(self.tp_dim, self.tp_rank * shard, shard)
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, output_size, bias, tp_dim=None)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication in forward."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, _divide(output_size, get_tp_world_size()), bias, tp_dim=0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused in one matmul (e.g. gate+up)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        target = param.data.narrow(0, offset, size)
        target.copy_(loaded.narrow(0, self.tp_rank * size, size) if self.tp_size > 1 else loaded)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; KV heads are split (or replicated) across ranks."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = get_tp_world_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp)
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        output = (num_heads + 2 * self.num_kv_heads * tp) * head_dim
        super().__init__(hidden_size, output, bias)

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

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(_divide(input_size, get_tp_world_size()), output_size, bias, tp_dim=1)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if param.dim() == 1:  # bias: applied once, on rank 0
            param.data.copy_(loaded if self.tp_rank == 0 else torch.zeros_like(loaded))
            return
        super().weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tp_all_reduce(self._matmul(x))
