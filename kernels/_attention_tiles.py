"""The online-softmax walk over paged K/V tiles that the decode and prefill kernels share.

A program of either kernel holds a tile of query rows against one KV head (decode: the query
heads that share it, all at the last position; prefill: ``BLOCK_M`` positions of one query head)
and walks the context tokens ``[lo, hi)`` in tiles of ``BLOCK_N``, gathered through the block
table, keeping a running max, sum and output in fp32. What differs stays in the kernels: where
the rows come from, the range of keys, and what is written at the end (decode's splits write
unnormalised partials).

``attend_paged_tiles`` is called once per program, never once per tile: under ``TRITON_INTERPRET``
each call of a jit function re-patches ``triton.language`` (see ``_triton_utils``).
"""
from __future__ import annotations

import triton
import triton.language as tl

# Finite stand-in for -inf as the initial running max, so a row that has seen no key yet
# rescales by exp(0) = 1 instead of exp(-inf - -inf) = NaN.
NEG_INIT = tl.constexpr(-1.0e30)


@triton.jit
def attend_paged_tiles(q, pos, lo, hi, k_cache_ptr, v_cache_ptr, bt_row, kvh, offs_d, d_mask,
                       scale, soft_cap, sliding_window, block_size,
                       stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                       BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       USE_SOFT_CAP: tl.constexpr, USE_WINDOW: tl.constexpr, MASK_PER_QUERY: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, P_DTYPE: tl.constexpr):
    """``q`` ``[BLOCK_ROWS, BLOCK_D]`` against keys ``[lo, hi)`` -> (running max, running sum, unnormalised
    output ``[BLOCK_ROWS, BLOCK_D]``), all fp32.

    ``MASK_PER_QUERY``: mask each (row, key) pair causally by the row's position ``pos`` (and by the
    window); without it only keys past ``hi`` are masked, for callers whose ``[lo, hi)`` already
    holds only keys every row sees (decode), and ``pos`` is unused."""
    if UPCAST_DOT:
        q = q.to(tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_ROWS], NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_ROWS], tl.float32)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_D], tl.float32)
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
        if MASK_PER_QUERY:
            visible = n_mask[None, :] & (toks[None, :] <= pos[:, None])
            if USE_WINDOW:
                visible = visible & (pos[:, None] - toks[None, :] < sliding_window)
            s = tl.where(visible, s, float("-inf"))
        else:
            s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(P_DTYPE).to(v.dtype), v,
                                            input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i, l_i, acc
