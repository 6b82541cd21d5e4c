"""Builders for paged-attention test cases, an independent naive oracle and error bookkeeping.

A case is a batch of sequences, each ``(context_len, query_len)``, laid out in a KV cache whose
physical blocks are handed out in shuffled order, and whose every unused slot holds a poison
value (NaN by default), so a kernel that reads a wrong slot shows it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Worst relative error seen per (kernel, dtype) in this session, printed in the summary.
WORST: dict[tuple[str, str], float] = {}

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def check(kernel: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Assert ``‖out−ref‖/‖ref‖`` within the dtype's tolerance and record it."""
    assert torch.isfinite(out).all(), f"{kernel}: non-finite output (read a poisoned slot?)"
    err = rel_err(out, ref)
    key = (kernel, str(dtype).replace("torch.", ""))
    WORST[key] = max(WORST.get(key, 0.0), err)
    assert err < TOL[dtype], f"{kernel} {dtype}: relative error {err:.3e} >= {TOL[dtype]}"
    return err


@dataclass
class PagedCase:
    q: torch.Tensor  # [num_query_tokens, num_heads, head_dim], chunks packed
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, unused entries 0
    context_lens: torch.Tensor  # int32
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    k_seq: list[torch.Tensor]  # per sequence [context_len, num_kv_heads, head_dim] (truth)
    v_seq: list[torch.Tensor]
    seqs: list[tuple[int, int]]
    block_size: int

    def slots(self, s: int) -> torch.Tensor:
        """Cache slot of every token of sequence ``s`` (a test-side loop, not a hot path)."""
        t = torch.arange(self.seqs[s][0])
        return self.block_tables[s].cpu().long()[t // self.block_size] * self.block_size \
            + t % self.block_size


def make_case(seqs, block_size, num_kv_heads, group, head_dim, dtype, *, seed=0,
              poison=float("nan"), extra_blocks=3, device=DEVICE) -> PagedCase:
    """Sequences ``[(context_len, query_len)]``; their K/V for all context tokens is cached."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-c // block_size) for c, _ in seqs]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    perm = torch.randperm(num_blocks, generator=g)
    width = max(blocks_per_seq) + 2  # wider than needed: the spare entries stay 0
    block_tables = torch.zeros(len(seqs), width, dtype=torch.int32)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, poison, dtype=dtype)
    v_cache = torch.full(shape, poison, dtype=dtype)
    k_seq, v_seq = [], []
    used = 0
    for s, ((ctx, _), nb) in enumerate(zip(seqs, blocks_per_seq)):
        block_tables[s, :nb] = perm[used:used + nb]
        used += nb
        t = torch.arange(ctx)
        blk, off = block_tables[s, t // block_size].long(), t % block_size
        k = torch.randn(ctx, num_kv_heads, head_dim, generator=g).to(dtype)
        v = torch.randn(ctx, num_kv_heads, head_dim, generator=g).to(dtype)
        k_cache[blk, off], v_cache[blk, off] = k, v
        k_seq.append(k)
        v_seq.append(v)
    qlens = torch.tensor([ql for _, ql in seqs])
    qsl = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    qsl[1:] = qlens.cumsum(0)
    q = torch.randn(int(qlens.sum()), num_kv_heads * group, head_dim, generator=g).to(dtype)
    ctx_lens = torch.tensor([c for c, _ in seqs], dtype=torch.int32)
    to = lambda x: x.to(device)  # noqa: E731
    return PagedCase(to(q), to(k_cache), to(v_cache), to(block_tables), to(ctx_lens), to(qsl),
                     k_seq, v_seq, list(seqs), block_size)


def naive_attention(case: PagedCase, scale: float, sliding_window=None, soft_cap=None):
    """Float64, one sequence and one query row at a time, from the per-sequence truth K/V
    (never through the cache or the block tables): the oracle for the reference twins."""
    q = case.q.double().cpu()
    out = torch.zeros_like(q)
    group = q.shape[1] // case.k_seq[0].shape[1]
    start = 0
    for s, (ctx, qlen) in enumerate(case.seqs):
        k = case.k_seq[s].double().repeat_interleave(group, dim=1)  # [ctx, H, D]
        v = case.v_seq[s].double().repeat_interleave(group, dim=1)
        for i in range(qlen):
            pos = ctx - qlen + i
            lo = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
            scores = torch.einsum("hd,jhd->hj", q[start + i], k[lo:pos + 1]) * scale
            if soft_cap is not None:
                scores = soft_cap * torch.tanh(scores / soft_cap)
            out[start + i] = torch.einsum("hj,jhd->hd", scores.softmax(-1), v[lo:pos + 1])
        start += qlen
    return out


def boundary_lengths(block_size: int, longest: int = 2048) -> list[int]:
    """Context lengths at and around block boundaries, short to ``longest``."""
    return [1, 2, block_size - 1, block_size, block_size + 1, 3 * block_size + 5, 257, longest]


# (block_size, head_dim, group, dtype): every pair of values of any two factors appears in some
# row (a pairwise covering of the 24-case product), for the fast tests; slow tests run all 24.
PAIRWISE_GRID = [
    (16, 64, 1, torch.float32),
    (32, 128, 1, torch.bfloat16),
    (16, 128, 4, torch.bfloat16),
    (32, 64, 4, torch.float32),
    (16, 64, 8, torch.bfloat16),
    (32, 128, 8, torch.float32),
]
FULL_GRID = [(b, h, g, d) for b in (16, 32) for h in (64, 128) for g in (1, 4, 8)
             for d in (torch.float32, torch.bfloat16)]


def grid_id(p) -> str:
    b, h, g, d = p
    return f"bs{b}-d{h}-gqa{g}-{str(d).replace('torch.', '')}"
