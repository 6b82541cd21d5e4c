"""The fp8 KV-cache format (``kv_cache_dtype="fp8"``): e4m3 values, one bf16 scale per token and KV head.

Why per-token, per-head scales: a token's K/V are written once, when it is computed, and never
rewritten; a scale chosen from that row alone (``amax / 448``) needs no calibration pass, never
saturates on a later, larger activation, and follows heads whose ranges differ by orders of
magnitude (vLLM's default per-layer scale of 1.0 leaves small heads in e4m3's subnormals and
clips outliers above 448). It costs 2 bytes per ``head_dim`` bytes: 66 bytes per 64-dim row
against 128 in bf16 (1.94x the blocks), 130 against 256 at head_dim 128 (1.97x).

Layout: a layer's cache is a uint8 tensor ``[num_blocks, block_size, num_kv_heads, head_dim + 2]``;
each (slot, KV head) row is ``head_dim`` e4m3fn codes followed by the row's scale as a
little-endian bf16. Keeping the scale inside the row keeps one tensor per layer and per K/V, so
everything that handles blocks by index (block tables, prefix caching, tensor-parallel shards,
which each hold their own heads) is unchanged.

The scale is ``amax * (1/448)`` rounded *up* to bf16 (bit arithmetic, identical in torch, C and
Triton), so ``x / scale`` stays within e4m3's +-448; codes round to nearest even (torch's cast).
This module holds the torch twins: the torch backend's path and the kernels' test oracle.
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0
SCALE_BYTES = 2  # one bf16 per row
INV_E4M3_MAX = torch.tensor(1.0 / E4M3_MAX, dtype=torch.float32).item()  # the float32 constant every path uses
MIN_AMAX = 1e-30  # an all-zero row gets a tiny (normal) scale instead of 0, whose quotient would be NaN
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")  # vLLM's names; fp8 is e4m3 there too


def is_fp8(kv_cache_dtype: str) -> bool:
    return kv_cache_dtype in ("fp8", "fp8_e4m3")


def row_bytes(head_dim: int) -> int:
    """Bytes of one (slot, KV head) row of an fp8 cache."""
    return head_dim + SCALE_BYTES


def is_fp8_cache(cache: torch.Tensor) -> bool:
    """fp8 caches are the only uint8 ones."""
    return cache.dtype == torch.uint8


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """float32 scales ``[...]`` of rows ``x [..., head_dim]``: amax / 448, rounded up to a bf16 value."""
    amax = x.float().abs().amax(-1).clamp_min(MIN_AMAX)
    bits = (amax * INV_E4M3_MAX).view(torch.int32)
    return ((bits + 0xFFFF) & -0x10000).view(torch.float32)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Rows ``x [..., head_dim]`` -> packed uint8 rows ``[..., head_dim + 2]``."""
    scale = row_scales(x)
    codes = (x.float() / scale.unsqueeze(-1)).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    scale_bytes = scale.to(torch.bfloat16).unsqueeze(-1).view(torch.uint8)  # exact: already a bf16 value
    return torch.cat([codes.view(torch.uint8), scale_bytes], dim=-1)


def codes_and_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows -> (e4m3fn codes ``[..., head_dim]``, float32 scales ``[...]``); views where torch allows."""
    d = packed.shape[-1] - SCALE_BYTES
    scale_bytes = packed[..., d:]
    if scale_bytes.stride(-1) != 1 or any(s % 2 for s in scale_bytes.stride()[:-1]) or scale_bytes.storage_offset() % 2:
        scale_bytes = scale_bytes.contiguous()
    return packed[..., :d].view(torch.float8_e4m3fn), scale_bytes.view(torch.bfloat16).squeeze(-1).float()


def dequantize(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed rows ``[..., head_dim + 2]`` -> ``[..., head_dim]`` of ``dtype`` (code * scale, in float32,
    or float64 when asked: the tests' oracle)."""
    codes, scales = codes_and_scales(packed)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return (codes.to(compute) * scales.to(compute).unsqueeze(-1)).to(dtype)
