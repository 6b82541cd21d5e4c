"""Triton paged prefill attention over packed variable-length chunks (twin:
``reference.paged_prefill_attention``).

One launch covers the whole batch: a program owns ``BLOCK_M`` queries of one chunk and one query
head, and programs past their chunk's end return at once. All keys, the cached prefix and the
chunk's own (written by ``store_kv`` just before), are read through the block table, so fresh
prompts, chunked prefill and prefix-cache hits are one code path. Query ``i`` of a chunk of
length ``L`` in a context of ``C`` tokens is at position ``C - L + i``; only key tiles some query
of the program can see are visited (causal and sliding-window bounds), and the mask is applied
per element. Online softmax in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._triton_utils import dot_flags

_NEG_INIT = tl.constexpr(-1.0e30)  # finite initial running max: see decode_attention


@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_ptr,
                    context_lens_ptr, out_ptr,
                    scale, soft_cap, sliding_window,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                    stride_bts, block_size, head_dim, group,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    USE_SOFT_CAP: tl.constexpr, USE_WINDOW: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
                   P_DTYPE: tl.constexpr):
    m_block = tl.program_id(0)
    seq = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    m0 = m_block * BLOCK_M
    if m0 >= q_len:
        return
    ctx = tl.load(context_lens_ptr + seq)
    prefix = ctx - q_len
    kvh = h // group

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < head_dim
    pos = prefix + offs_m  # absolute position of each query row
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    # Keys any row of this program may see: [lo, hi).
    hi = tl.minimum(prefix + m0 + BLOCK_M, ctx)
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(prefix + m0 - sliding_window + 1, 0)

    m_i = tl.full([BLOCK_M], _NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bts
    for n0 in range(lo, hi, BLOCK_N):
        toks = n0 + offs_n
        n_mask = toks < hi
        blk = tl.load(bt_row + toks // block_size, mask=n_mask, other=0).to(tl.int64)
        within = (toks % block_size).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + within[:, None] * stride_ks
                    + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + within[:, None] * stride_vs
                    + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        if USE_SOFT_CAP:  # soft_cap * tanh(s / soft_cap), tanh via exp (no libdevice)
            s = soft_cap * (1.0 - 2.0 / (tl.exp(2.0 * s / soft_cap) + 1.0))
        visible = n_mask[None, :] & (toks[None, :] <= pos[:, None])
        if USE_WINDOW:
            visible = visible & (pos[:, None] - toks[None, :] < sliding_window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(P_DTYPE).to(v.dtype), v,
                                            input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            context_lens: torch.Tensor, scale: float,
                            sliding_window: int | None = None, soft_cap: float | None = None,
                            *, max_query_len: int | None = None,
                            max_context_len: int | None = None,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """q ``[T, num_heads, head_dim]`` packed chunks -> attention output of the same shape.

    ``max_query_len`` (host int) sizes the grid without a device sync; ``max_context_len`` is
    accepted for symmetry with the reference and unused.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("q, k_cache and v_cache must be contiguous in head_dim")
    if q.dtype != k_cache.dtype or k_cache.dtype != v_cache.dtype:
        raise TypeError(f"q, k_cache, v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, "
                        f"{v_cache.dtype}")
    if out is None:
        out = torch.empty_like(q)
    num_seqs = context_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    block_m = 64 if max_query_len > 32 else 16
    block_n = 64 if head_dim <= 128 else 32
    grid = (triton.cdiv(max_query_len, block_m), num_seqs, num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out,
        scale, soft_cap if soft_cap is not None else 1.0,
        sliding_window if sliding_window is not None else 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), k_cache.shape[1], head_dim, num_heads // num_kv_heads,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(head_dim),
        USE_SOFT_CAP=soft_cap is not None, USE_WINDOW=sliding_window is not None,
        **dot_flags(_prefill_kernel, q.dtype))
    return out
