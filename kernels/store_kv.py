"""Triton kernel writing a step's new K/V into the paged cache (twin: ``reference.store_kv``).

One program per token copies all of its KV heads; tokens with slot -1 (padding, or tokens whose
K/V is already cached) are skipped. Strides are passed, so k/v may be views of a fused QKV output.
An fp8 cache (uint8, ``kv_fp8``'s rows) takes ``_store_kv_fp8_kernel``: each (token, KV head) row is
quantized with its own scale, in integer arithmetic that equals the torch twin's (twin:
``kv_fp8.quantize``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kcs, stride_kch,
                     stride_vcb, stride_vcs, stride_vch,
                     num_kv_heads, head_dim, block_size,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // block_size
    off = slot % block_size
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < num_kv_heads) & (d < head_dim)
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(k_cache_ptr + blk * stride_kcb + off * stride_kcs + h * stride_kch + d,
             k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + blk * stride_vcb + off * stride_vcs + h * stride_vch + d,
             v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_rows(x_ptrs, row_ptrs, mask, h_mask, head_dim, d):
    """x ``[BLOCK_H, BLOCK_D]`` rows -> e4m3 codes and bf16 scales written at ``row_ptrs`` (see kv_fp8)."""
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-30)
    bits = (amax * 0.002232142857142857).to(tl.int32, bitcast=True)  # amax / 448 ...
    bits = (bits + 0xFFFF) & -65536  # ... rounded up to a bf16 value
    y = x / bits.to(tl.float32, bitcast=True)[:, None]
    yb = y.to(tl.int32, bitcast=True)
    a = tl.minimum(tl.abs(y), 448.0)
    ab = a.to(tl.int32, bitcast=True)
    normal = ((ab + 0x7FFFF + ((ab >> 20) & 1)) >> 20) - 960  # round the mantissa to 3 bits, rebias 127 -> 7
    sv = a * 512.0  # below 2^-6: subnormal m = a * 2^9 rounded to nearest even
    si = sv.to(tl.int32)
    frac = sv - si.to(tl.float32)
    sub = si + ((frac > 0.5) | ((frac == 0.5) & ((si & 1) == 1))).to(tl.int32)
    code = tl.where(a < 0.015625, sub, normal) | ((yb >> 24) & 0x80)
    tl.store(row_ptrs[:, None] + d, code.to(tl.uint8), mask=mask)
    tl.store(row_ptrs + head_dim, ((bits >> 16) & 0xFF).to(tl.uint8), mask=h_mask)
    tl.store(row_ptrs + head_dim + 1, ((bits >> 24) & 0xFF).to(tl.uint8), mask=h_mask)


@triton.jit
def _store_kv_fp8_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                         stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_kcb, stride_kcs, stride_kch,
                         stride_vcb, stride_vcs, stride_vch,
                         num_kv_heads, head_dim, block_size,
                         BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // block_size
    off = slot % block_size
    hs = tl.arange(0, BLOCK_H)
    h = hs[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    h_mask = hs < num_kv_heads
    mask = (h < num_kv_heads) & (d < head_dim)
    t64 = t.to(tl.int64)
    _quantize_rows(k_ptr + t64 * stride_kt + h * stride_kh + d,
                   k_cache_ptr + blk * stride_kcb + off * stride_kcs + hs * stride_kch, mask, h_mask, head_dim, d)
    _quantize_rows(v_ptr + t64 * stride_vt + h * stride_vh + d,
                   v_cache_ptr + blk * stride_vcb + off * stride_vcs + hs * stride_vch, mask, h_mask, head_dim, d)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write k/v ``[T, num_kv_heads, head_dim]`` to ``slot_mapping`` slots of the caches."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    for name, x in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) dimension")
    kernel = _store_kv_fp8_kernel if k_cache.dtype == torch.uint8 else _store_kv_kernel
    kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        num_kv_heads, head_dim, k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim))
