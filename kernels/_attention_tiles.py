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
                       scale, soft_cap, sliding_window, block_size, head_dim,
                       stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                       BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       USE_SOFT_CAP: tl.constexpr, USE_WINDOW: tl.constexpr, MASK_PER_QUERY: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, P_DTYPE: tl.constexpr,
                       FP8: tl.constexpr = False):
    """``q`` ``[BLOCK_ROWS, BLOCK_D]`` against keys ``[lo, hi)`` -> (running max, running sum, unnormalised
    output ``[BLOCK_ROWS, BLOCK_D]``), all fp32.

    ``MASK_PER_QUERY``: mask each (row, key) pair causally by the row's position ``pos`` (and by the
    window); without it only keys past ``hi`` are masked, for callers whose ``[lo, hi)`` already
    holds only keys every row sees (decode), and ``pos`` is unused.

    ``FP8``: the caches are uint8 rows of ``head_dim`` e4m3 codes and a bf16 scale (``kv_fp8``). Codes
    are decoded with integer arithmetic (exact, also under the interpreter) into q's dtype, which
    holds every e4m3 value exactly; the scales stay out of the dots: K's multiply the scores, V's
    the probabilities (after the running sum, which they do not change)."""
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
        k_rows = k_cache_ptr + blk * stride_kb + within * stride_ks + kvh * stride_kh
        v_rows = v_cache_ptr + blk * stride_vb + within * stride_vs + kvh * stride_vh
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if FP8:  # e4m3: exponent 0 is subnormal (m * 2^-9), else shift the fields into fp32's (bias 7 -> 127)
            kb = k.to(tl.int32)
            k_em = kb & 0x7F
            k = tl.where(k_em < 8, k_em.to(tl.float32) * 0.001953125,
                         ((k_em << 20) + (120 << 23)).to(tl.float32, bitcast=True))
            k = tl.where(kb >= 128, -k, k).to(q.dtype)
            vb = v.to(tl.int32)
            v_em = vb & 0x7F
            v = tl.where(v_em < 8, v_em.to(tl.float32) * 0.001953125,
                         ((v_em << 20) + (120 << 23)).to(tl.float32, bitcast=True))
            v = tl.where(vb >= 128, -v, v).to(q.dtype)
            # each row's bf16 scale: bytes head_dim (low) and head_dim + 1 (high)
            k_scale = ((tl.load(k_rows + head_dim + 1, mask=n_mask, other=0).to(tl.int32) << 24)
                       | (tl.load(k_rows + head_dim, mask=n_mask, other=0).to(tl.int32) << 16)).to(tl.float32,
                                                                                                   bitcast=True)
            v_scale = ((tl.load(v_rows + head_dim + 1, mask=n_mask, other=0).to(tl.int32) << 24)
                       | (tl.load(v_rows + head_dim, mask=n_mask, other=0).to(tl.int32) << 16)).to(tl.float32,
                                                                                                   bitcast=True)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        if FP8:
            s = s * k_scale[None, :]
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
        if FP8:
            p = p * v_scale[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(P_DTYPE).to(v.dtype), v,
                                            input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i, l_i, acc
