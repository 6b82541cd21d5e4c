"""Triton GEMM on GPTQ/AWQ weights in the shared w4a16 layout (``core/quantization/w4a16_weight.py``).

The same layout as the CPU kernel (``cpu_w4a16.c``): weight rows are output features, two 4-bit codes a
byte (column 2j in the low nibble) or one 8-bit code, float32 scale and zero point per (row, group),
groups contiguous after the desc_act reordering. Each program dequantizes a [BLOCK_K, BLOCK_N] tile of
the weight in registers, ``(code - zero) * scale``, and multiplies it with a [BLOCK_M, BLOCK_K] tile of
activations through ``tl.dot``; fp32 accumulation. ``col_group`` (int32 [k], each reordered column's
group) lets groups be of any size, as the CPU kernel's group starts do.

Status: tested in Triton's CPU interpreter against the float64 spec reference
(``tests/kernels/test_w4a16_triton.py``); not yet timed or run on a GPU, and the engine still refuses
GPTQ/AWQ on CUDA until it is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._triton_utils import is_interpreted


@triton.jit
def _w4a16_matmul_kernel(x_ptr, codes_ptr, scales_ptr, zeros_ptr, col_group_ptr, out_ptr,
                         m, n, k, groups, stride_x, stride_codes, stride_out,
                         BITS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n < n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_x + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        wmask = mask_k[:, None] & mask_n[None, :]
        row_base = offs_n[None, :].to(tl.int64) * stride_codes
        if BITS == 4:
            byte = tl.load(codes_ptr + row_base + (offs_k[:, None] // 2), mask=wmask, other=0).to(tl.int32)
            q = (byte >> ((offs_k[:, None] % 2) * 4)) & 15
        else:
            q = tl.load(codes_ptr + row_base + offs_k[:, None], mask=wmask, other=0).to(tl.int32)
        g = tl.load(col_group_ptr + offs_k, mask=mask_k, other=0)
        meta = offs_n[None, :].to(tl.int64) * groups + g[:, None]
        scale = tl.load(scales_ptr + meta, mask=wmask, other=0.0)
        zero = tl.load(zeros_ptr + meta, mask=wmask, other=0.0)
        w = (q.to(tl.float32) - zero) * scale
        if UPCAST:
            acc += tl.dot(x.to(tl.float32), w, input_precision=DOT_PRECISION)
        else:
            acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_out + offs_n[None, :], acc,
             mask=mask_m[:, None] & mask_n[None, :])


def col_group(weight) -> torch.Tensor:
    """int32 [k]: each (reordered) column's group, from the weight's group starts."""
    counts = (weight.group_starts[1:] - weight.group_starts[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(weight.groups, dtype=torch.int32, device=counts.device), counts)


def matmul(x: torch.Tensor, weight, groups_of_columns: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T`` in float32 for x [m, k] (columns in the weight's group order) on x's device."""
    if x.dim() != 2 or x.shape[1] != weight.cols:
        raise ValueError(f"x must be [rows, {weight.cols}], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    x = x if x.stride(1) == 1 else x.contiguous()
    groups_of_columns = col_group(weight) if groups_of_columns is None else groups_of_columns
    out = torch.empty(x.shape[0], weight.rows, dtype=torch.float32, device=x.device)
    if x.shape[0] == 0:
        return out
    interpreted = is_interpreted(_w4a16_matmul_kernel)
    block_m = 16 if x.shape[0] <= 16 else 64
    block_n, block_k = 64, 32
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(weight.rows, block_n))
    _w4a16_matmul_kernel[grid](
        x, weight.codes, weight.scales, weight.zeros, groups_of_columns, out,
        x.shape[0], weight.rows, weight.cols, weight.groups, x.stride(0), weight.codes.stride(0), out.stride(0),
        BITS=weight.bits, DOT_PRECISION="ieee" if x.dtype == torch.float32 or interpreted else "tf32",
        UPCAST=x.dtype != torch.float32 and interpreted,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out
