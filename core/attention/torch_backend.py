"""Torch attention backend: gather K/V through block tables, then scaled_dot_product_attention.

Runs on CPU (the fast path there) and is the oracle for the Triton kernels. Each layer does
one gather and one SDPA call for all decodes, and one of each for all prefill chunks
(padded to the longest). K/V are gathered whole blocks at a time (``index_select`` over
the block table: a few KB per row, memcpy speed) rather than slot by slot. The masks are
additive (0 / -inf), built once per step in ``prepare``, and hide both the padding and the
block tail beyond each context. GQA is folded into the query length, so K/V are never
repeated per query head. ALiBi layers get the bias ``slope[h] * (key_pos - q_pos)`` folded
into that mask (then one mask per query head, built once per step like the others).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend, AttentionMetadata
from pagedllm.kernels import kv_fp8


def _gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[num_blocks, bs, KVH, D] x [B, nb] -> [B, KVH, nb*bs, D] (a strided view of the copy).

    An fp8 cache (uint8 rows of D codes and a scale) is gathered as bytes, then dequantized to ``dtype``."""
    B, nb = block_tables.shape
    _, bs, kvh, d = cache.shape
    blocks = cache.index_select(0, block_tables.reshape(-1))
    if kv_fp8.is_fp8_cache(cache):
        blocks = kv_fp8.dequantize(blocks, dtype)
        d = blocks.shape[-1]
    return blocks.view(B, nb * bs, kvh, d).transpose(1, 2)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


# Decodes are padded to the longest context of their group; splitting a mixed-length batch
# into a few groups of similar length saves most of the padding for a few more calls.
MAX_DECODE_GROUPS = 4
MIN_GROUP_SIZE = 8


def _length_buckets(context_lens: list[int]) -> list[list[int] | None]:
    """Row groups of similar context length (``[None]``: one group, rows in order)."""
    n = len(context_lens)
    num_groups = min(MAX_DECODE_GROUPS, n // MIN_GROUP_SIZE)
    if num_groups <= 1 or max(context_lens) < 2 * min(context_lens):
        return [None]
    order = sorted(range(n), key=context_lens.__getitem__)
    size = -(-n // num_groups)
    return [order[i:i + size] for i in range(0, n, size)]


@dataclass(slots=True, eq=False)
class StepPart:
    """One part of a step's attention (all prefill chunks, or one group of decodes) with what its
    masks are built from: made once per step, read by every layer."""

    tables: torch.Tensor  # int64 block tables the part's K/V are gathered through
    key_pos: torch.Tensor  # position of each gathered key, broadcast against q_pos
    q_pos: torch.Tensor  # absolute position of each query row
    allowed: torch.Tensor  # causal and context bound, before a layer's sliding window and ALiBi
    rows: torch.Tensor | None = None  # decode group: its rows of the step's decodes (None: all, in order)
    gather: torch.Tensor | None = None  # prefill: packed token index of each padded query row
    valid: torch.Tensor | None = None  # prefill: which padded rows are real tokens
    pad_rows: torch.Tensor | None = None  # prefill: padding rows, kept on key 0 under a window
    # additive masks by (dtype, window, ALiBi slopes), made by the first layer that asks: layers differ in those
    masks: dict = field(default_factory=dict)


def _decode_group(md: AttentionMetadata, rows: list[int] | None, bs: int, dev) -> StepPart:
    """Block tables and mask for one group of decode rows, trimmed to the group's longest context."""
    tables, ctx = md.decode_block_tables, md.decode_context_lens
    if rows is not None:
        index = torch.tensor(rows, device=dev)
        longest = max(md.decode_context_lens_list[r] for r in rows)
        tables = tables.index_select(0, index)[:, :-(-longest // bs)]
        ctx = ctx.index_select(0, index)
    key_pos = torch.arange(tables.shape[1] * bs, device=dev).view(1, 1, 1, -1)
    q_pos = (ctx.long() - 1).view(-1, 1, 1, 1)
    return StepPart(rows=None if rows is None else index, tables=tables.long(), key_pos=key_pos,
                    q_pos=q_pos, allowed=key_pos <= q_pos)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        state = md.backend_state
        bs = md.block_size
        dev = md.slot_mapping.device
        writes = md.slot_mapping >= 0  # the same for every layer: decide once per step
        state.write_mask = None if bool(writes.all()) else writes
        if md.num_prefills:
            tables = md.prefill_block_tables.long()
            Lq, Lk = md.max_prefill_query_len, tables.shape[1] * bs
            q_lens = torch.diff(md.prefill_query_start_loc).long()
            ctx = md.prefill_context_lens.long()
            qi = torch.arange(Lq, device=dev)
            q_valid = qi.unsqueeze(0) < q_lens.unsqueeze(1)  # [P, Lq]
            # Padded [P, Lq] -> packed token index (padding reads token 0 of the chunk).
            start = md.prefill_query_start_loc[:-1].long().unsqueeze(1)
            q_pos = (ctx - q_lens).unsqueeze(1) + qi.unsqueeze(0)  # absolute position of each query
            k_pos = torch.arange(Lk, device=dev).view(1, 1, Lk)
            state.prefill = StepPart(
                tables=tables, key_pos=k_pos, q_pos=q_pos.unsqueeze(2),
                # Causal (which also bounds the context); padded query rows see key 0 only.
                allowed=(k_pos <= q_pos.unsqueeze(2)) | (~q_valid.unsqueeze(2) & (k_pos == 0)),
                gather=(start + torch.where(q_valid, qi.unsqueeze(0), 0)).reshape(-1),
                valid=q_valid.reshape(-1), pad_rows=~q_valid.unsqueeze(2))

    def _mask(self, part: StepPart, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of one part of the step, with this layer's sliding window and ALiBi; cached."""
        key = (dtype, self.sliding_window, None if self.alibi_slopes is None else tuple(self.alibi_slopes))
        cache = part.masks
        if key not in cache:
            allowed = part.allowed
            if self.sliding_window is not None:
                in_window = part.key_pos > part.q_pos - self.sliding_window
                if part.pad_rows is not None:
                    in_window = in_window | part.pad_rows
                allowed = allowed & in_window
            if self.alibi_slopes is None:
                cache[key] = _additive(allowed, dtype)
            else:
                cache[key] = self._alibi_mask(part, _additive(allowed, torch.float32)).to(dtype)
        return cache[key]

    def _alibi_mask(self, part: StepPart, mask: torch.Tensor) -> torch.Tensor:
        """``mask + slope[h] * (key_pos - q_pos)`` per query head ``h = kv_head * G + g``, in the
        layout the queries are folded into: decode [B, KVH, G, Lk], prefill [P, KVH, G*Lq, Lk]."""
        KVH = self.num_kv_heads
        G = self.num_heads // KVH
        slopes = torch.tensor(self.alibi_slopes, dtype=torch.float32, device=mask.device)
        rel = (part.key_pos - part.q_pos).float()
        if rel.dim() == 4:  # decode group: [B, 1, 1, Lk]
            return mask + slopes.view(1, KVH, G, 1) * rel
        P, Lq, Lk = rel.shape  # prefill
        bias = slopes.view(1, KVH, G, 1, 1) * rel.view(P, 1, 1, Lq, Lk)
        return (mask.view(P, 1, 1, Lq, Lk) + bias).reshape(P, KVH, G * Lq, Lk)

    def _attend(self, q, k, v, mask):
        """q: [B, KVH, G*Lq, D], k/v: [B, KVH, Lk, D], additive mask broadcastable to [B, KVH, G*Lq, Lk]."""
        if self.logits_soft_cap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
        scores = torch.tanh(scores / self.logits_soft_cap) * self.logits_soft_cap + mask.float()
        return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)

    def forward(self, q, k, v, k_cache, v_cache, md: AttentionMetadata) -> torch.Tensor:
        self._write_cache(k, v, k_cache, v_cache, md)
        out = torch.empty_like(q)
        if md.num_decode_tokens:
            self._decode(q[:md.num_decode_tokens], k_cache, v_cache, md, out[:md.num_decode_tokens])
        if md.num_prefills:
            self._prefill(q[md.num_decode_tokens:], k_cache, v_cache, md, out[md.num_decode_tokens:])
        return out

    def _write_cache(self, k, v, k_cache, v_cache, md: AttentionMetadata) -> None:
        num_slots = k_cache.shape[0] * k_cache.shape[1]
        flat_k = k_cache.view(num_slots, self.num_kv_heads, k_cache.shape[-1])
        flat_v = v_cache.view(num_slots, self.num_kv_heads, v_cache.shape[-1])
        if kv_fp8.is_fp8_cache(k_cache):  # rows of e4m3 codes and a scale, quantized here
            k, v = kv_fp8.quantize(k), kv_fp8.quantize(v)
        write = md.backend_state.write_mask
        if write is None:
            flat_k.index_copy_(0, md.slot_mapping, k)
            flat_v.index_copy_(0, md.slot_mapping, v)
        else:
            flat_k.index_copy_(0, md.slot_mapping[write], k[write])
            flat_v.index_copy_(0, md.slot_mapping[write], v[write])

    def _decode(self, q, k_cache, v_cache, md: AttentionMetadata, out) -> None:
        """q, out: [num_decodes, H, D]; one SDPA call per group of similar context lengths."""
        state = md.backend_state
        if state.decode_groups is None:  # built by the first layer that needs them
            state.decode_groups = [_decode_group(md, rows, md.block_size, q.device)
                                      for rows in _length_buckets(md.decode_context_lens_list)]
        H, KVH, D = self.num_heads, self.num_kv_heads, self.head_dim
        nd = q.shape[0]
        qd = q.view(nd, KVH, H // KVH, D)
        for group in state.decode_groups:
            rows, tables = group.rows, group.tables
            kd, vd = _gather_blocks(k_cache, tables, q.dtype), _gather_blocks(v_cache, tables, q.dtype)
            qg = qd if rows is None else qd.index_select(0, rows)
            og = self._attend(qg, kd, vd, self._mask(group, q.dtype)).reshape(-1, H, D)
            if rows is None:
                out.copy_(og)
            else:
                out.index_copy_(0, rows, og)

    def _prefill(self, q, k_cache, v_cache, md: AttentionMetadata, out) -> None:
        """q, out: the packed prefill tokens [num_prefill_tokens, H, D]; chunks padded to the longest."""
        H, KVH, D = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // KVH
        P, Lq = md.num_prefills, md.max_prefill_query_len
        prefill = md.backend_state.prefill
        kp, vp = _gather_blocks(k_cache, prefill.tables, q.dtype), _gather_blocks(v_cache, prefill.tables, q.dtype)
        qp = q[prefill.gather].view(P, Lq, KVH, G, D)
        qp = qp.permute(0, 2, 3, 1, 4).reshape(P, KVH, G * Lq, D)
        mask = self._mask(prefill, q.dtype)  # [P, Lq, Lk]; ALiBi: already [P, KVH, G*Lq, Lk]
        if mask.dim() == 3:
            mask = mask.unsqueeze(1).expand(P, G, Lq, mask.shape[-1]).reshape(P, 1, G * Lq, -1)
        op = self._attend(qp, kp, vp, mask)  # [P, KVH, G*Lq, D]
        op = op.view(P, KVH, G, Lq, D).permute(0, 3, 1, 2, 4).reshape(P * Lq, H, D)
        out.copy_(op[prefill.valid])
