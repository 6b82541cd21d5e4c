"""Triton paged decode attention (twin: ``reference.paged_decode_attention``).

One query token per sequence. A program owns one (sequence, KV head, context split): it loads
the query heads that share that KV head as one ``[group, head_dim]`` tile (GQA/MQA), so each K/V
tile is read once per KV head rather than once per query head, and walks its split of the
context in tiles of ``BLOCK_N`` tokens gathered through the block table, with an online softmax
accumulated in fp32 (the loop the prefill kernel shares: ``_attention_tiles``).

Long contexts with few sequences would leave most of the GPU idle, so the context is cut into
``num_splits`` splits (flash-decoding); each split writes an unnormalised partial output plus
its running max and sum, and a second kernel merges the splits. With one split the first kernel
writes the normalised output directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._attention_tiles import NEG_INIT, attend_paged_tiles
from pagedllm.kernels._triton_utils import check_paged_inputs, dot_flags


@triton.jit
def _decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
                   out_ptr, part_acc_ptr, part_ml_ptr,
                   scale, soft_cap, sliding_window, partition_size,
                   stride_qs, stride_qh, stride_os, stride_oh,
                   stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                   stride_bts,
                   stride_pas, stride_pah, stride_pap,
                   stride_pms, stride_pmh, stride_pmp,
                   block_size, head_dim, group,
                   BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   USE_SOFT_CAP: tl.constexpr, USE_WINDOW: tl.constexpr,
                   SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
                   P_DTYPE: tl.constexpr, FP8: tl.constexpr):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq64 = seq.to(tl.int64)
    ctx = tl.load(context_lens_ptr + seq)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kvh * group + offs_g
    g_mask = offs_g < group
    d_mask = offs_d < head_dim

    q = tl.load(q_ptr + seq64 * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    start = split * partition_size
    end = tl.minimum(start + partition_size, ctx)
    if USE_WINDOW:
        # The query is at position ctx - 1 and sees keys j with (ctx - 1) - j < window.
        start = tl.maximum(start, ctx - sliding_window)
    # Every key in [start, end) is visible to all rows (one position): no per-query mask.
    m_i, l_i, acc = attend_paged_tiles(
        q, 0, start, end, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq64 * stride_bts, kvh, offs_d, d_mask,
        scale, soft_cap, sliding_window, block_size, head_dim,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        BLOCK_ROWS=BLOCK_G, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, USE_SOFT_CAP=USE_SOFT_CAP, USE_WINDOW=USE_WINDOW,
        MASK_PER_QUERY=False, DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT, P_DTYPE=P_DTYPE,
        FP8=FP8)

    if SPLIT:
        pa = (part_acc_ptr + seq64 * stride_pas + heads[:, None] * stride_pah
              + split * stride_pap + offs_d[None, :])
        tl.store(pa, acc, mask=g_mask[:, None] & d_mask[None, :])
        pm = part_ml_ptr + seq64 * stride_pms + heads * stride_pmh + split * stride_pmp
        tl.store(pm, m_i, mask=g_mask)
        tl.store(pm + 1, l_i, mask=g_mask)
    else:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(out_ptr + seq64 * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def _reduce_kernel(part_acc_ptr, part_ml_ptr, out_ptr, num_splits,
                   stride_pas, stride_pah, stride_pap,
                   stride_pms, stride_pmh, stride_pmp,
                   stride_os, stride_oh, head_dim,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the splits of one (sequence, head): rescale each to the global max and normalise."""
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < head_dim
    pm = part_ml_ptr + seq * stride_pms + h * stride_pmh + offs_s * stride_pmp
    m = tl.load(pm, mask=s_mask, other=NEG_INIT)
    l = tl.load(pm + 1, mask=s_mask, other=0.0)
    acc = tl.load(part_acc_ptr + seq * stride_pas + h * stride_pah
                  + offs_s[:, None] * stride_pap + offs_d[None, :],
                  mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    w = tl.exp(m - tl.max(m, axis=0))  # empty splits: m = NEG_INIT, l = 0, acc = 0
    total = tl.sum(w * l, axis=0)
    total = tl.where(total > 0.0, total, 1.0)
    o = tl.sum(w[:, None] * acc, axis=0) / total
    tl.store(out_ptr + seq * stride_os + h * stride_oh + offs_d, o.to(out_ptr.dtype.element_ty),
             mask=d_mask)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int,
                      target_programs: int = 264, min_partition: int = 256,
                      max_splits: int = 64) -> int:
    """Splits per sequence so that about ``target_programs`` programs run (2 per SM on an H100).

    Never splits below ``min_partition`` tokens: a split's fixed cost (its partial output and the
    merge) must stay small against its share of the K/V reads.
    """
    by_len = triton.cdiv(max(max_context_len, 1), min_partition)
    by_occupancy = triton.cdiv(target_programs, max(num_seqs * num_kv_heads, 1))
    return max(1, min(by_len, by_occupancy, max_splits))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None, soft_cap: float | None = None,
                           *, max_context_len: int | None = None,
                           out: torch.Tensor | None = None, num_splits: int | None = None,
                           workspace: dict | None = None) -> torch.Tensor:
    """q ``[num_seqs, num_heads, head_dim]`` -> attention output of the same shape.

    ``max_context_len`` (host int) avoids a device sync; ``num_splits`` overrides the split
    heuristic; ``workspace`` (any dict kept for a step) lets layers reuse the split buffers.
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    check_paged_inputs(q, k_cache, v_cache)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    if max_context_len is None:
        max_context_len = int(context_lens.max())
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context_len)
    block_n = 64 if head_dim <= 128 else 32
    partition = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), block_n) * block_n
    num_splits = triton.cdiv(max(max_context_len, 1), partition)
    block_d = triton.next_power_of_2(head_dim)
    split = num_splits > 1
    if split:
        acc_shape = (num_seqs, num_heads, num_splits, head_dim)
        ml_shape = (num_seqs, num_heads, num_splits, 2)
        key = ("decode_split", acc_shape, q.device)
        bufs = workspace.get(key) if workspace is not None else None
        if bufs is None:
            bufs = (torch.empty(acc_shape, dtype=torch.float32, device=q.device),
                    torch.empty(ml_shape, dtype=torch.float32, device=q.device))
            if workspace is not None:
                workspace[key] = bufs
        part_acc, part_ml = bufs
    else:
        part_acc = part_ml = out  # unused
    pa_strides = part_acc.stride()[:3] if split else (0, 0, 0)
    pm_strides = part_ml.stride()[:3] if split else (0, 0, 0)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_acc, part_ml,
        scale, soft_cap if soft_cap is not None else 1.0,
        sliding_window if sliding_window is not None else 0, partition,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), *pa_strides, *pm_strides,
        k_cache.shape[1], head_dim, group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=block_d,
        USE_SOFT_CAP=soft_cap is not None, USE_WINDOW=sliding_window is not None,
        SPLIT=split, FP8=k_cache.dtype == torch.uint8, **dot_flags(_decode_kernel, q.dtype))
    if split:
        _reduce_kernel[(num_seqs, num_heads)](
            part_acc, part_ml, out, num_splits, *pa_strides, *pm_strides,
            out.stride(0), out.stride(1), head_dim,
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d)
    return out
