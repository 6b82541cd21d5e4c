"""Triton fused elementwise ops of a decoder layer (twins in ``reference``).

Each replaces several torch ops (and their round trips through memory) with one kernel:
RMSNorm with the residual add folded in, rotary embedding of q and k, and the gated-MLP
activation. All compute in fp32 and round where the unfused HF model rounds. They are the
CUDA paths of the layers ``RMSNorm``, ``RotaryEmbedding`` and ``SiluAndMul``
(``models/layers``, bound once at load).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
                     stride_x, stride_r, stride_o, stride_ro, n_cols, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        x_rounded = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + cols, x_rounded, mask=mask)
        x = x_rounded.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """2-D view ``[rows, last_dim]`` with a unit last stride (copies only if it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """RMSNorm over the last dim; with ``residual`` returns ``(out, x + residual)``."""
    n = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o2 = out.view(-1, n)
    if residual is not None:
        r2 = _rows(residual)
        res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ro2 = res_out.view(-1, n)
    else:
        r2 = ro2 = res_out = x2  # unused
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, o2, ro2, x2.stride(0), r2.stride(0), o2.stride(0), ro2.stride(0),
            n, eps, HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(n))
    return out if residual is None else (out, res_out)


@triton.jit
def _rotary_kernel(pos_ptr, x_ptr, out_ptr, cs_ptr, stride_xt, stride_xh, stride_ot, stride_oh,
                   stride_cs, num_heads, head_dim, half,
                   IS_NEOX: tl.constexpr, HAS_PASS: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """One token, all heads: rotate pairs (i, i + half) (neox) or (2i, 2i + 1) (GPT-J)."""
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_R)[None, :]
    h_mask = h < num_heads
    mask = h_mask & (i < half)
    cos = tl.load(cs_ptr + pos * stride_cs + i, mask=i < half, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + pos * stride_cs + half + i, mask=i < half, other=0.0).to(tl.float32)
    if IS_NEOX:
        d1 = i
        d2 = i + half
    else:
        d1 = 2 * i
        d2 = 2 * i + 1
    x_row = x_ptr + t * stride_xt + h * stride_xh
    o_row = out_ptr + t * stride_ot + h * stride_oh
    x1 = tl.load(x_row + d1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + d2, mask=mask, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    # each product rounded to the dtype before the sum, as the unfused torch ops (the layer's oracle) round
    x1c, x2s = (x1 * cos).to(dt).to(tl.float32), (x2 * sin).to(dt).to(tl.float32)
    x2c, x1s = (x2 * cos).to(dt).to(tl.float32), (x1 * sin).to(dt).to(tl.float32)
    tl.store(o_row + d1, (x1c - x2s).to(dt), mask=mask)
    tl.store(o_row + d2, (x2c + x1s).to(dt), mask=mask)
    if HAS_PASS:  # dims past rotary_dim (partial rotary) are copied unchanged
        p = 2 * half + tl.arange(0, BLOCK_P)[None, :]
        p_mask = h_mask & (p < head_dim)
        tl.store(o_row + p, tl.load(x_row + p, mask=p_mask), mask=p_mask)


def _rotate(positions, x, cos_sin_cache, head_dim, rotary_dim, is_neox_style):
    x3 = x.unflatten(-1, (-1, head_dim)) if x.dim() == 2 else x
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    num_tokens, num_heads, _ = x3.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o3 = out.view(num_tokens, num_heads, head_dim)
    half = rotary_dim // 2
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, x3, o3, cos_sin_cache, x3.stride(0), x3.stride(1), o3.stride(0),
            o3.stride(1), cos_sin_cache.stride(0), num_heads, head_dim, half,
            IS_NEOX=is_neox_style, HAS_PASS=rotary_dim < head_dim,
            BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_R=triton.next_power_of_2(half),
            BLOCK_P=triton.next_power_of_2(max(head_dim - rotary_dim, 1)))
    return out


def rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
           cos_sin_cache: torch.Tensor, head_dim: int, rotary_dim: int, is_neox_style: bool):
    """Rotary embedding of q and k (``[T, heads*head_dim]`` or ``[T, heads, head_dim]``);
    returns new ``(q, k)``. ``cos_sin_cache[pos] = [cos | sin]``, ``rotary_dim/2`` each."""
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim must be even and <= head_dim ({head_dim}); got {rotary_dim}")
    if cos_sin_cache.stride(-1) != 1:
        cos_sin_cache = cos_sin_cache.contiguous()
    return (_rotate(positions, q, cos_sin_cache, head_dim, rotary_dim, is_neox_style),
            _rotate(positions, k, cos_sin_cache, head_dim, rotary_dim, is_neox_style))


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    # silu(gate) rounded to the dtype before the product, as the unfused model's two ops round
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for x of last dim ``2d``."""
    d = x.shape[-1] // 2
    x2 = _rows(x)
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    o2 = out.view(-1, d)
    block = min(triton.next_power_of_2(max(d, 1)), 1024)
    if x2.shape[0] and d:
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2, o2, x2.stride(0), o2.stride(0), d, BLOCK=block)
    return out
