"""Triton GEMM on GGUF block-quantized weights as the file stores them (issue 22: the GPU side of
``cpu_gguf.c``): Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, 32 weights a block.

A weight is ``uint8 [rows, row_bytes]``, each row ``k / 32`` blocks in ggml's layout (an fp16 scale, an fp16
minimum for Q4_1/Q5_1, 32 fifth bits for Q5_0/Q5_1, then the codes: weight j of a 4/5-bit block in the low
nibble of byte j for j < 16, the high nibble of byte j - 16 otherwise; Q8_0 one signed byte each). Each
program takes one block column per step: it decodes a [32, BLOCK_N] tile of weights in registers straight
from the bytes (fp16 scales rebuilt from their two bytes) and multiplies a [BLOCK_M, 32] activation tile
with ``tl.dot``; fp32 accumulation. Float activations (no 8-bit rounding), as the CPU batch path.

Status: tested in Triton's CPU interpreter against float64 products of the ``gguf`` package's dequantized
weights (``tests/kernels/test_gguf_triton.py``); not yet timed or run on a GPU, and the engine still refuses
GGUF weights on CUDA (``dequantize_gguf=True`` runs them dense there) until it is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._triton_utils import is_interpreted

# type name -> (GGMLQuantizationType id, bytes per 32-weight block)
TYPES = {"Q4_0": (2, 18), "Q4_1": (3, 20), "Q5_0": (6, 22), "Q5_1": (7, 24), "Q8_0": (8, 34)}


@triton.jit
def _fp16_at(w_ptr, at, mask):
    """The fp16 stored little-endian at byte offsets ``at``, as float32."""
    lo = tl.load(w_ptr + at, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(w_ptr + at + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _gguf_matmul_kernel(x_ptr, w_ptr, out_ptr, m, n, k, stride_x, row_bytes, stride_out,
                        QTYPE: tl.constexpr, BLOCK_BYTES: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n[None, :] < n
    j = tl.arange(0, 32)[:, None]  # weight index within a block
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for block in range(0, k // 32):
        offs_k = block * 32 + tl.arange(0, 32)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_x + offs_k[None, :], mask=mask_m[:, None],
                    other=0.0)
        base = offs_n[None, :].to(tl.int64) * row_bytes + block * BLOCK_BYTES  # [1, BLOCK_N]
        d = _fp16_at(w_ptr, base, mask_n)
        if QTYPE == 8:  # Q8_0: d, 32 signed codes
            q = tl.load(w_ptr + base + 2 + j, mask=mask_n, other=0).to(tl.int8, bitcast=True).to(tl.float32)
            w = q * d
        else:
            codes_at = 2 if QTYPE == 2 else 4 if QTYPE == 3 else 6 if QTYPE == 6 else 8
            byte = tl.load(w_ptr + base + codes_at + (j % 16), mask=mask_n, other=0).to(tl.int32)
            q = (byte >> ((j // 16) * 4)) & 15
            if QTYPE == 6 or QTYPE == 7:  # the fifth bit of weight j: bit j of the 32-bit qh
                qh_at = base + (2 if QTYPE == 6 else 4)
                qh = tl.load(w_ptr + qh_at + j // 8, mask=mask_n, other=0).to(tl.int32)
                q = q | (((qh >> (j % 8)) & 1) << 4)
            if QTYPE == 3 or QTYPE == 7:  # Q4_1 / Q5_1: d q + m
                w = q.to(tl.float32) * d + _fp16_at(w_ptr, base + 2, mask_n)
            else:  # Q4_0 / Q5_0: d (q - 8) / d (q - 16)
                w = (q - (8 if QTYPE == 2 else 16)).to(tl.float32) * d
        if UPCAST:
            acc += tl.dot(x.to(tl.float32), w, input_precision=DOT_PRECISION)
        else:
            acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_out + offs_n[None, :], acc,
             mask=mask_m[:, None] & mask_n)


def matmul(x: torch.Tensor, qweight: torch.Tensor, qtype: int, k: int) -> torch.Tensor:
    """``x @ W.T`` in float32 for x [m, k] and the GGUF weight ``qweight`` (uint8 [rows, k / 32 blocks]) on x's
    device."""
    names = {tid: name for name, (tid, _) in TYPES.items()}
    if qtype not in names:
        raise ValueError(f"qtype={qtype} has no Triton kernel; supported: {', '.join(TYPES)}")
    block_bytes = TYPES[names[qtype]][1]
    if k <= 0 or k % 32 or qweight.dtype != torch.uint8 or qweight.dim() != 2 or qweight.shape[1] != k // 32 * block_bytes:
        raise ValueError(f"qweight must be uint8 [rows, {k // 32 * block_bytes}] of {names[qtype]} rows of k={k} "
                         f"(a multiple of 32), got {qweight.dtype} {list(qweight.shape)}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [rows, {k}], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    x = x if x.stride(1) == 1 else x.contiguous()
    qweight = qweight.contiguous()
    out = torch.empty(x.shape[0], qweight.shape[0], dtype=torch.float32, device=x.device)
    if x.shape[0] == 0 or qweight.shape[0] == 0:
        return out
    interpreted = is_interpreted(_gguf_matmul_kernel)
    block_m = 16 if x.shape[0] <= 16 else 64
    block_n = 64
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(qweight.shape[0], block_n))
    _gguf_matmul_kernel[grid](
        x, qweight, out, x.shape[0], qweight.shape[0], k, x.stride(0), qweight.shape[1], out.stride(0),
        QTYPE=qtype, BLOCK_BYTES=block_bytes,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or interpreted else "tf32",
        UPCAST=x.dtype != torch.float32 and interpreted, BLOCK_M=block_m, BLOCK_N=block_n)
    return out
