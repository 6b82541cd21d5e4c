"""One GGUF tensor as the file stores it, and the products the engine needs of it.

A quantized tensor stays as its uint8 blocks ``[rows, row_bytes]``; F32/F16/BF16 tensors (norms,
and any linear weight a mixed file keeps in float) are float tensors, which is their native form.
``matmul`` runs the C kernel (``pagedllm.kernels.cpu_gguf``) on the blocks: directly for a few rows
(decode), through dequantized row tiles and torch's GEMM in the batch's dtype for many rows (prefill,
batches: ``dequantized_matmul``), where the GEMM's blocking wins; a bfloat16 batch on a CPU with AMX-BF16
multiplies on AMX tiles from the blocks instead (``cpu_gguf.matmul_amx``), the weight dequantized 32 rows
at a time in L1. Without the C build the reference path
dequantizes with the ``gguf`` package per call: correct, slow, warned once.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from pagedllm.forward_context import get_forward_context
from pagedllm.kernels import cpu_gguf
from pagedllm.quantization.dequantized_matmul import dequantized_matmul

logger = logging.getLogger(__name__)

FLOAT_TYPES = {0: "F32", 1: "F16", 30: "BF16"}  # GGMLQuantizationType ids stored as plain floats
SMALL_BATCH = 16  # rows up to which the direct kernel beats dequantize-a-tile + GEMM (2-core AVX2 EPYC)
# In decode-only steps the direct kernel rounds activations to 8-bit blocks and sums in integers (llama.cpp's
# decode numerics: cpu_q8.h) for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights; PAGEDLLM_GGUF_Q8_ACTIVATIONS=0 keeps float32.
Q8_ACTIVATIONS = os.environ.get("PAGEDLLM_GGUF_Q8_ACTIVATIONS", "1") != "0"
# A bf16 batch on an AMX-BF16 CPU leaves the direct kernel above this many rows: the AMX tiles read each weight
# once for all rows, the direct kernel dots each row again (3072 x 576 Q4_1 on the Xeon: 70 us for 1 row, 233
# for 4, 668 for 16 with 8-bit activations, 478 and 1512 with float32 ones, against 175-180 us on AMX)
AMX_SMALL_BATCH = 2


def direct_rows(dtype: torch.dtype) -> int:
    """Rows up to which ``GGUFWeight.matmul`` of activations of ``dtype`` takes the direct kernel."""
    return AMX_SMALL_BATCH if dtype == torch.bfloat16 and _has_amx() else SMALL_BATCH


@functools.cache
def _has_amx() -> bool:  # asked once: direct_rows is on every quantized product's path
    return cpu_gguf.has_amx()


def decode_step() -> bool:
    """Whether the running forward is a decode-only step, where 8-bit activations apply. Prompt rows keep the
    float paths whatever their number, so a prompt's KV values (and the answer) do not depend on how much of
    it a prefix cache held (a cached prefix leaves a few-row chunk, which the direct kernel would take)."""
    md = get_forward_context()
    return md is not None and getattr(md, "num_prefills", 1) == 0


def type_name(qtype: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"type {qtype}"


def kernel_types() -> tuple[str, ...]:
    """The quantized types this device multiplies natively (the C kernel's)."""
    return tuple(cpu_gguf.BLOCKS)


_warned_reference = False


@dataclass(slots=True, eq=False)
class GGUFWeight:
    """``data``: uint8 blocks [rows, row_bytes] of ``qtype``, or a float [rows, cols] tensor for the float
    types; ``name``: the GGUF tensor name (for messages)."""

    data: torch.Tensor
    qtype: int
    rows: int
    cols: int
    name: str = ""
    _row_kernels: dict = field(default_factory=dict, repr=False)  # q8 (bool) -> the direct kernel's caller

    @classmethod
    def dense(cls, tensor: torch.Tensor, name: str = "") -> "GGUFWeight":
        if tensor.dim() != 2:
            raise ValueError(f"{name or 'tensor'}: a linear weight must be 2-D, got {list(tensor.shape)}")
        return cls(tensor, 0, tensor.shape[0], tensor.shape[1], name)

    @property
    def quantized(self) -> bool:
        return self.qtype not in FLOAT_TYPES

    @property
    def type_name(self) -> str:
        return type_name(self.qtype)

    def check_kernel(self) -> None:
        """Refuse a quantized type the C kernel cannot multiply (never made dense behind the user's back)."""
        if self.quantized and self.type_name not in cpu_gguf.BLOCKS:
            raise ValueError(
                f"GGUF tensor {self.name!r} has type {self.type_name}, which has no CPU kernel in this release; "
                f"quantized types supported: {', '.join(kernel_types())} (and F32/F16/BF16). Load the file with "
                "dequantize_gguf=True (--dequantize-gguf) to run it as dense float weights instead")

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols]."""
        if not self.quantized:
            return self.data.float()
        out = cpu_gguf.dequantize(self.data, self.qtype, self.cols) if self.type_name in cpu_gguf.BLOCKS else None
        return out if out is not None else dequantize_reference(self.data, self.qtype)

    def take_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 rows ``ids`` (an embedding lookup: only the looked-up rows are dequantized)."""
        if not self.quantized:
            return F.embedding(ids, self.data).float()
        picked = GGUFWeight(self.data.index_select(0, ids.reshape(-1)), self.qtype, ids.numel(), self.cols)
        return picked.dequantize().view(*ids.shape, self.cols)

    def matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x @ W.T`` for x [m, cols]: [m, rows] in ``out_dtype`` when given (the direct kernel may then write it
        as is), else float32 up to ``direct_rows`` rows, bfloat16 for a bfloat16 ``x`` and float32 for any other
        beyond (the float types: in their own dtype). 8-bit activations in decode-only steps (``decode_step``)."""
        if self.quantized and x.shape[0] <= direct_rows(x.dtype):
            run = self.row_kernel(Q8_ACTIVATIONS and decode_step())
            if run is not None:
                return run(x, out_dtype or torch.float32)
        out = self._matmul(x, out_dtype)
        return out if out_dtype is None else out.to(out_dtype)

    def row_kernel(self, q8: bool) -> Callable[..., torch.Tensor] | None:
        """``run(x, out_dtype)`` for up to ``direct_rows`` rows of x: the direct kernel's caller, on 8-bit
        activations (``q8``, where the type has that path) or float32 ones; made once each (None for a float type
        or without the C build)."""
        if q8 not in self._row_kernels and self.quantized:
            self._row_kernels[q8] = cpu_gguf.row_kernel(self.data, self.qtype, self.cols, q8)
        return self._row_kernels.get(q8)

    def _matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        if not self.quantized:
            return F.linear(x.to(self.data.dtype), self.data)
        lib = cpu_gguf.load()
        if lib is None:
            _warn_reference()
            x = x.float()
            return F.linear(x, dequantize_reference(self.data, self.qtype))
        if x.dtype == torch.bfloat16 and cpu_gguf.has_amx(lib):  # a bf16 GEMM on AMX tiles, from the blocks
            # asked for bf16, the kernel rounds its tiles itself: no float32 copy; else float32 (a bias is added there)
            return cpu_gguf.matmul_amx(x, self.data, self.qtype, self.cols, lib,
                                       out_dtype=torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32)
        return dequantized_matmul(x, self.rows, self.cols, lambda start, stop, out: cpu_gguf.dequantize(
            self.data[start:stop], self.qtype, self.cols, lib, dtype=out.dtype, out=out))


def dequantize_reference(data: torch.Tensor, qtype: int) -> torch.Tensor:
    """The ``gguf`` package's dequantization (the oracle, and the path without a C compiler)."""
    from gguf import GGMLQuantizationType, quants

    return torch.from_numpy(quants.dequantize(data.numpy(), GGMLQuantizationType(qtype)).astype("float32"))


def _warn_reference() -> None:
    global _warned_reference
    if not _warned_reference:
        _warned_reference = True
        logger.warning("GGUF matmuls run the reference path (the C kernel is unavailable): dequantized per call, "
                       "slow; install a C compiler or unset PAGEDLLM_CPU_KERNEL=0")
