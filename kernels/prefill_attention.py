"""Triton paged prefill attention over packed variable-length chunks (twin:
``reference.paged_prefill_attention``).

One launch covers the whole batch: a program owns ``BLOCK_M`` queries of one chunk and one query
head, and programs past their chunk's end return at once. All keys, the cached prefix and the
chunk's own (written by ``store_kv`` just before), are read through the block table, so fresh
prompts, chunked prefill and prefix-cache hits are one code path. Query ``i`` of a chunk of
length ``L`` in a context of ``C`` tokens is at position ``C - L + i``; only key tiles some query
of the program can see are visited (causal and sliding-window bounds), and the mask is applied
per element. Online softmax in fp32 (the loop the decode kernel shares: ``_attention_tiles``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels._attention_tiles import attend_paged_tiles
from pagedllm.kernels._triton_utils import check_paged_inputs, dot_flags


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
                   P_DTYPE: tl.constexpr, FP8: tl.constexpr):
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
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < head_dim
    pos = prefix + offs_m  # absolute position of each query row
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    # Keys any row of this program may see: [lo, hi).
    hi = tl.minimum(prefix + m0 + BLOCK_M, ctx)
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(prefix + m0 - sliding_window + 1, 0)
    m_i, l_i, acc = attend_paged_tiles(
        q, pos, lo, hi, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq.to(tl.int64) * stride_bts, kvh, offs_d,
        d_mask, scale, soft_cap, sliding_window, block_size, head_dim,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        BLOCK_ROWS=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, USE_SOFT_CAP=USE_SOFT_CAP, USE_WINDOW=USE_WINDOW,
        MASK_PER_QUERY=True, DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT, P_DTYPE=P_DTYPE,
        FP8=FP8)

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
    check_paged_inputs(q, k_cache, v_cache)
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
        FP8=k_cache.dtype == torch.uint8, **dot_flags(_prefill_kernel, q.dtype))
    return out
