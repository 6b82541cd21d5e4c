"""Triton SGMV: the batched LoRA matmul of one layer over a step's adapter segments (punica's shape).

``out[seg] += x[seg] @ A[slot, :c].T @ B[slot, :, :c].T`` for every segment ``(slot, start, end)`` of
the step, in two kernels: *shrink* (``x @ A.T`` into a [tokens, R] buffer, one program per segment
row-block) and *expand* (``buffer @ B.T`` added into ``out``, one program per segment row-block and
output column block). Rank columns past an adapter's own ``c`` are masked, so one launch serves
adapters of every rank up to ``max_lora_rank``. The torch twin, and the oracle, is
``pagedllm.lora.punica.add_lora`` (its per-segment matmuls); fp32 accumulation throughout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _segment_rows(seg_ptr, cols_ptr, BLOCK_M: tl.constexpr):
    """This program's segment ``(slot, start, end)`` (axis 0), its adapter's rank columns in use, and
    its block of row indices (axis 1); rows at or past ``end`` are masked by the caller."""
    seg = tl.program_id(0)
    slot = tl.load(seg_ptr + seg * 3)
    start = tl.load(seg_ptr + seg * 3 + 1)
    end = tl.load(seg_ptr + seg * 3 + 2)
    rows = start + tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    return slot, tl.load(cols_ptr + slot), rows, end


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, buf_ptr, seg_ptr, cols_ptr, K, stride_x, stride_as, stride_ar, stride_buf,
                   BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    slot, c, rows, end = _segment_rows(seg_ptr, cols_ptr, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    row_ok = rows < end
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + ks[None, :],
                     mask=row_ok[:, None] & (ks[None, :] < K), other=0.0).to(tl.float32)
        at = tl.load(a_ptr + slot.to(tl.int64) * stride_as + ranks[None, :] * stride_ar + ks[:, None],
                     mask=(ranks[None, :] < c) & (ks[:, None] < K), other=0.0).to(tl.float32)
        acc += tl.dot(xt, at, input_precision="ieee")
    tl.store(buf_ptr + rows[:, None].to(tl.int64) * stride_buf + ranks[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _expand_kernel(buf_ptr, b_ptr, out_ptr, seg_ptr, cols_ptr, N, stride_buf, stride_bs, stride_bn, stride_out,
                   BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, c, rows, end = _segment_rows(seg_ptr, cols_ptr, BLOCK_M)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, BLOCK_R)
    row_ok, col_ok = rows < end, cols < N
    shrunk = tl.load(buf_ptr + rows[:, None].to(tl.int64) * stride_buf + ranks[None, :],
                     mask=row_ok[:, None] & (ranks[None, :] < c), other=0.0)
    bt = tl.load(b_ptr + slot.to(tl.int64) * stride_bs + cols[None, :] * stride_bn + ranks[:, None],
                 mask=(ranks[:, None] < c) & col_ok[None, :], other=0.0).to(tl.float32)
    delta = tl.dot(shrunk, bt, input_precision="ieee")
    ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    prev = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, (prev + delta).to(out_ptr.dtype.element_ty), mask=mask)


def sgmv_add(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
             columns: torch.Tensor, segments: torch.Tensor, max_segment_len: int) -> torch.Tensor:
    """``out`` [T, N] += each segment's LoRA product, in place; ``x`` [T, K], ``lora_a`` [slots, R, K],
    ``lora_b`` [slots, N, R], ``columns`` [slots] int32 (rank columns in use), ``segments`` [S, 3] int32
    rows ``(slot, start, end)`` on the device. Segments with ``columns[slot] == 0`` add nothing."""
    S = segments.shape[0]
    if S == 0 or max_segment_len == 0:
        return out
    T, K = x.shape
    N, R = lora_b.shape[1], lora_b.shape[2]
    if out.stride(1) != 1:
        raise ValueError("sgmv_add adds into an out with unit last stride (a linear layer's output)")
    x = x if x.stride(1) == 1 else x.contiguous()
    a, b = lora_a.contiguous(), lora_b.contiguous()
    block_r = max(16, triton.next_power_of_2(R))
    block_m = 16 if max_segment_len <= 16 else 32
    buf = torch.empty(T, block_r, dtype=torch.float32, device=x.device)
    row_blocks = triton.cdiv(max_segment_len, block_m)
    _shrink_kernel[(S, row_blocks)](x, a, buf, segments, columns, K, x.stride(0), a.stride(0), a.stride(1),
                                    buf.stride(0), BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=32)
    block_n = 64
    _expand_kernel[(S, row_blocks, triton.cdiv(N, block_n))](buf, b, out, segments, columns, N, buf.stride(0),
                                                             b.stride(0), b.stride(1), out.stride(0),
                                                             BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_N=block_n)
    return out
