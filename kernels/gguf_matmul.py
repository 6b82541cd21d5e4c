"""Triton GEMM on GGUF block-quantized weights as the file stores them (issue 22: the GPU side of
``cpu_gguf.c``): Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (32 weights a block) and the K-quants Q4_K, Q5_K and Q6_K
(256 weights a super-block, in sub-blocks of 32 and 16), the types of the usual Q4_K_M and Q5_K_M files.

A weight is ``uint8 [rows, row_bytes]``, each row's blocks in ggml's layout (ggml-common.h): an fp16 scale,
an fp16 minimum for Q4_1/Q5_1, 32 fifth bits for Q5_0/Q5_1, then the codes (weight j of a 4/5-bit block in
the low nibble of byte j for j < 16, the high nibble of byte j - 16 otherwise; Q8_0 one signed byte each);
Q4_K: d, dmin, twelve bytes of 6-bit sub-block scales and minimums, 128 bytes of nibbles (Q5_K: 32 bytes of
fifth bits before them); Q6_K: 128 bytes of
low nibbles, 64 of high bit pairs, sixteen int8 scales, d. Each program takes 32 weights of each row per
step: it decodes a [32, BLOCK_N] tile in registers straight from the bytes (fp16 scales rebuilt from their
two bytes) and multiplies a [BLOCK_M, 32] activation tile with ``tl.dot``; fp32 accumulation. Float
activations (no 8-bit rounding), as the CPU batch path.

Status: tested in Triton's CPU interpreter against float64 products of the ``gguf`` package's dequantized
weights (``tests/kernels/test_gguf_triton.py``); not yet timed or run on a GPU, and the engine still refuses
GGUF weights on CUDA (``dequantize_gguf=True`` runs them dense there) until it is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._triton_utils import is_interpreted

# type name -> (GGMLQuantizationType id, weights per block, bytes per block)
TYPES = {"Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34),
         "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210)}


@triton.jit
def _fp16_at(w_ptr, at, mask):
    """The fp16 stored little-endian at byte offsets ``at``, as float32."""
    lo = tl.load(w_ptr + at, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(w_ptr + at + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _q4_k_tile(w_ptr, base, sub, j, mask, FIVE: tl.constexpr):
    """Weights 32 sub .. 32 sub + 31 of Q4_K (or, ``FIVE``, Q5_K) super-blocks at ``base``: [32, BLOCK_N]."""
    d, dmin = _fp16_at(w_ptr, base, mask), _fp16_at(w_ptr, base + 2, mask)
    sc_at = base + 4  # scale_min_k4: 6-bit scale and minimum of sub-block sub
    if sub < 4:
        scale = tl.load(w_ptr + sc_at + sub, mask=mask, other=0).to(tl.int32) & 63
        minimum = tl.load(w_ptr + sc_at + sub + 4, mask=mask, other=0).to(tl.int32) & 63
    else:
        low = tl.load(w_ptr + sc_at + sub + 4, mask=mask, other=0).to(tl.int32)
        scale = (low & 15) | ((tl.load(w_ptr + sc_at + sub - 4, mask=mask, other=0).to(tl.int32) >> 6) << 4)
        minimum = (low >> 4) | ((tl.load(w_ptr + sc_at + sub, mask=mask, other=0).to(tl.int32) >> 6) << 4)
    byte = tl.load(w_ptr + base + (48 if FIVE else 16) + 32 * (sub // 2) + j, mask=mask, other=0).to(tl.int32)
    q = (byte >> (4 * (sub % 2))) & 15
    if FIVE:  # Q5_K: the fifth bit of weight j of sub-block sub is bit sub of qh[j]
        q = q | (((tl.load(w_ptr + base + 16 + j, mask=mask, other=0).to(tl.int32) >> sub) & 1) << 4)
    return d * scale.to(tl.float32) * q.to(tl.float32) - dmin * minimum.to(tl.float32)


@triton.jit
def _q6_k_tile(w_ptr, base, sub, j, mask):
    """Weights 32 sub .. 32 sub + 31 of Q6_K super-blocks at ``base``: [32, BLOCK_N]."""
    half, quarter = sub // 4, sub % 4  # weight 128 half + 32 quarter + j
    low = tl.load(w_ptr + base + 64 * half + 32 * (quarter % 2) + j, mask=mask, other=0).to(tl.int32)
    high = tl.load(w_ptr + base + 128 + 32 * half + j, mask=mask, other=0).to(tl.int32)
    q = ((low >> (4 * (quarter // 2))) & 15) | (((high >> (2 * quarter)) & 3) << 4)
    scale = tl.load(w_ptr + base + 192 + 8 * half + 2 * quarter + j // 16, mask=mask, other=0).to(tl.int8,
                                                                                                   bitcast=True)
    return _fp16_at(w_ptr, base + 208, mask) * scale.to(tl.float32) * (q - 32).to(tl.float32)


@triton.jit
def _gguf_matmul_kernel(x_ptr, w_ptr, out_ptr, m, n, k, stride_x, row_bytes, stride_out,
                        QTYPE: tl.constexpr, BLOCK_WEIGHTS: tl.constexpr, BLOCK_BYTES: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n[None, :] < n
    j = tl.arange(0, 32)[:, None]  # weight index within 32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, k // 32):
        offs_k = step * 32 + tl.arange(0, 32)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_x + offs_k[None, :], mask=mask_m[:, None],
                    other=0.0)
        block = step // (BLOCK_WEIGHTS // 32)
        base = offs_n[None, :].to(tl.int64) * row_bytes + block * BLOCK_BYTES  # [1, BLOCK_N]
        if QTYPE == 12 or QTYPE == 13:
            w = _q4_k_tile(w_ptr, base, step % 8, j, mask_n, QTYPE == 13)
        elif QTYPE == 14:
            w = _q6_k_tile(w_ptr, base, step % 8, j, mask_n)
        elif QTYPE == 8:  # Q8_0: d, 32 signed codes
            q = tl.load(w_ptr + base + 2 + j, mask=mask_n, other=0).to(tl.int8, bitcast=True).to(tl.float32)
            w = q * _fp16_at(w_ptr, base, mask_n)
        else:
            d = _fp16_at(w_ptr, base, mask_n)
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
    names = {tid: name for name, (tid, _, _) in TYPES.items()}
    if qtype not in names:
        raise ValueError(f"qtype={qtype} has no Triton kernel; supported: {', '.join(TYPES)}")
    _, block, block_bytes = TYPES[names[qtype]]
    if k <= 0 or k % block or qweight.dtype != torch.uint8 or qweight.dim() != 2 or \
            qweight.shape[1] != k // block * block_bytes:
        raise ValueError(f"qweight must be uint8 [rows, {k // block * block_bytes}] of {names[qtype]} rows of k={k} "
                         f"(a multiple of {block}), got {qweight.dtype} {list(qweight.shape)}")
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
        QTYPE=qtype, BLOCK_WEIGHTS=block, BLOCK_BYTES=block_bytes,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or interpreted else "tf32",
        UPCAST=x.dtype != torch.float32 and interpreted, BLOCK_M=block_m, BLOCK_N=block_n)
    return out
