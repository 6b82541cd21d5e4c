"""Triton GEMM on fp8 (e4m3fn) weights with one float32 scale per output row (w8a16, ``Fp8Weight``).

The same layout as the CPU kernel (``cpu_fp8.c``): weight rows are output features, one e4m3fn byte a
weight, read as uint8. Each program decodes a [BLOCK_K, BLOCK_N] tile of the weight in registers with
integer operations (rebias the exponent; subnormals as ``m * 2^-9``: no fp8 hardware needed, and the
CPU interpreter runs it), multiplies it with a [BLOCK_M, BLOCK_K] tile of activations through
``tl.dot`` in the activations' dtype (every e4m3 value is exact in fp16 and bf16), accumulates in
float32 and applies the row scales once at the end.

Status: tested in Triton's CPU interpreter against a float64 reference (``tests/kernels/test_fp8_triton.py``);
the engine uses it for ``quantization='fp8'`` on CUDA.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._triton_utils import is_interpreted


@triton.jit
def _fp8_matmul_kernel(x_ptr, codes_ptr, scales_ptr, out_ptr, m, n, k, stride_x, stride_codes, stride_out,
                       DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
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
        b = tl.load(codes_ptr + offs_n[None, :].to(tl.int64) * stride_codes + offs_k[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0).to(tl.int32)
        sign = (b & 0x80) << 24
        normal = (((b & 0x7F) << 20) + 0x3C000000) | sign  # exponent rebiased from 7 to 127
        sub = ((b & 7).to(tl.float32) * 0.001953125).to(tl.int32, bitcast=True) | sign  # m * 2^-9
        w = tl.where((b & 0x78) == 0, sub, normal).to(tl.float32, bitcast=True)
        if UPCAST:
            acc += tl.dot(x.to(tl.float32), w, input_precision=DOT_PRECISION)
        else:
            acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    scale = tl.load(scales_ptr + offs_n, mask=mask_n, other=0.0)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_out + offs_n[None, :], acc * scale[None, :],
             mask=mask_m[:, None] & mask_n[None, :])


def matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ (e4m3(codes) * scales[:, None]).T`` in float32 for x [m, k] on x's device."""
    if codes.dim() != 2 or x.dim() != 2 or x.shape[1] != codes.shape[1]:
        raise ValueError(f"x must be [rows, {codes.shape[-1]}], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if codes.dtype not in (torch.float8_e4m3fn, torch.uint8) or codes.stride(1) != 1:
        raise ValueError(f"codes must be float8_e4m3fn (or uint8) with contiguous rows, got {codes.dtype}")
    if scales.dtype != torch.float32 or tuple(scales.shape) != (codes.shape[0],) or not scales.is_contiguous():
        raise ValueError(f"scales must be a contiguous float32 tensor of shape [{codes.shape[0]}]")
    x = x if x.stride(1) == 1 else x.contiguous()
    out = torch.empty(x.shape[0], codes.shape[0], dtype=torch.float32, device=x.device)
    if x.shape[0] == 0 or codes.shape[0] == 0:
        return out
    interpreted = is_interpreted(_fp8_matmul_kernel)
    block_m = 16 if x.shape[0] <= 16 else 64
    block_n, block_k = 64, 64
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(codes.shape[0], block_n))
    _fp8_matmul_kernel[grid](
        x, codes.view(torch.uint8), scales, out, x.shape[0], codes.shape[0], codes.shape[1],
        x.stride(0), codes.stride(0), out.stride(0),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or interpreted else "tf32",
        UPCAST=x.dtype != torch.float32 and interpreted,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out
