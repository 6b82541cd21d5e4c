"""``x @ W.T`` for a batch of many rows on a quantized CPU weight: dequantize row tiles, then torch's GEMM.

Why: a batch (prefill, many concurrent decodes) does rows x more arithmetic per weight than a decode
step, and torch's blocked GEMM does it better than any row-at-a-time kernel; the quantized weight only
has to be turned into the GEMM's operand cheaply. So the C kernel dequantizes straight into the compute
dtype: bfloat16 for a bfloat16 batch (half the bytes of float32, and torch multiplies bf16 with AMX or
AVX512-BF16 where the CPU has them: the same operands and GEMM as the dense bf16 model, so the same
results), float32 otherwise. Tiles are bounded (``TILE_WEIGHTS``) and written into one reused buffer per
thread and dtype: no page faults and no fresh allocation per call.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F

TILE_WEIGHTS = 1 << 22  # weights dequantized at a time: a whole layer of a small model in one GEMM, an LM head
# in a few tiles (8 MiB of bf16, 16 MiB of float32)

_local = threading.local()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """bfloat16 for a bfloat16 batch, float32 for any other (float16 GEMMs on CPU are slow)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32


def scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements, reused by this thread's later calls (overwritten by them)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def dequantized_matmul(x: torch.Tensor, rows: int, cols: int,
                       fill: Callable[[int, int, torch.Tensor], object]) -> torch.Tensor:
    """``x @ W.T`` for x [m, cols] and a weight of ``rows`` x ``cols``: ``fill(start, stop, out)`` writes weight
    rows start..stop-1 dequantized into ``out`` ([stop - start, cols], contiguous, of the compute dtype).
    Returns [m, rows] in the compute dtype."""
    dtype = compute_dtype(x)
    x = x.to(dtype)
    tile_rows = max(1, min(rows, TILE_WEIGHTS // cols))
    buf = scratch(tile_rows * cols, dtype)
    if tile_rows >= rows:
        fill(0, rows, buf.view(rows, cols))
        return F.linear(x, buf.view(rows, cols))
    out = torch.empty(x.shape[0], rows, dtype=dtype)
    for start in range(0, rows, tile_rows):
        stop = min(rows, start + tile_rows)
        tile = buf[:(stop - start) * cols].view(stop - start, cols)
        fill(start, stop, tile)
        out[:, start:stop] = F.linear(x, tile)
    return out
