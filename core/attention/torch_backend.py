"""Torch attention backend: gather K/V through block tables, then scaled_dot_product_attention.

Runs on CPU (the fast path there) and is the oracle for the Triton kernels. Each layer does
one gather and one SDPA call for all decodes, and one of each for all prefill chunks
(padded to the longest). K/V are gathered whole blocks at a time (``index_select`` over
the block table: a few KB per row, memcpy speed) rather than slot by slot. The masks are
additive (0 / -inf), built once per step in ``prepare``, and hide both the padding and the
block tail beyond each context. GQA is folded into the query length, so K/V are never
repeated per query head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend, AttentionMetadata


def _gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, bs, KVH, D] x [B, nb] -> [B, KVH, nb*bs, D] (a strided view of the copy)."""
    B, nb = block_tables.shape
    _, bs, kvh, d = cache.shape
    return cache.index_select(0, block_tables.reshape(-1)).view(B, nb * bs, kvh, d).transpose(1, 2)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        state = md.backend_state
        bs = md.block_size
        dev = md.slot_mapping.device
        if md.num_decode_tokens:
            tables = md.decode_block_tables.long()
            key_pos = torch.arange(tables.shape[1] * bs, device=dev)
            state["decode_tables"] = tables
            state["decode_q_pos"] = (md.decode_context_lens.long() - 1).view(-1, 1, 1, 1)
            state["decode_key_pos"] = key_pos.view(1, 1, 1, -1)
            # [B, 1, 1, L]: keys inside the context.
            state["decode_allowed"] = key_pos.view(1, 1, 1, -1) <= state["decode_q_pos"]
        if md.num_prefills:
            tables = md.prefill_block_tables.long()
            Lq, Lk = md.max_prefill_query_len, tables.shape[1] * bs
            q_lens = torch.diff(md.prefill_query_start_loc).long()
            ctx = md.prefill_context_lens.long()
            qi = torch.arange(Lq, device=dev)
            q_valid = qi.unsqueeze(0) < q_lens.unsqueeze(1)  # [P, Lq]
            # Padded [P, Lq] -> packed token index (padding reads token 0 of the chunk).
            start = md.prefill_query_start_loc[:-1].long().unsqueeze(1)
            state["prefill_tables"] = tables
            state["prefill_gather"] = (start + torch.where(q_valid, qi.unsqueeze(0), 0)).reshape(-1)
            state["prefill_valid"] = q_valid.reshape(-1)
            q_pos = (ctx - q_lens).unsqueeze(1) + qi.unsqueeze(0)  # absolute position of each query
            k_pos = torch.arange(Lk, device=dev).view(1, 1, Lk)
            state["prefill_q_pos"] = q_pos.unsqueeze(2)
            state["prefill_key_pos"] = k_pos
            state["prefill_q_valid"] = q_valid.unsqueeze(2)
            # Causal (which also bounds the context); padded query rows see key 0 only.
            state["prefill_allowed"] = (k_pos <= q_pos.unsqueeze(2)) | (~q_valid.unsqueeze(2) & (k_pos == 0))

    def _mask(self, md: AttentionMetadata, part: str, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask for ``part``, with this layer's sliding window, cached per step."""
        key = (part, dtype, self.sliding_window)
        cache = md.backend_state.setdefault("masks", {})
        if key not in cache:
            s = md.backend_state
            allowed = s[f"{part}_allowed"]
            if self.sliding_window is not None:
                in_window = s[f"{part}_key_pos"] > s[f"{part}_q_pos"] - self.sliding_window
                if part == "prefill":
                    in_window = in_window | ~s["prefill_q_valid"]
                allowed = allowed & in_window
            cache[key] = _additive(allowed, dtype)
        return cache[key]

    def _attend(self, q, k, v, mask):
        """q: [B, KVH, G*Lq, D], k/v: [B, KVH, Lk, D], additive mask broadcastable to [B, 1, G*Lq, Lk]."""
        if self.logits_soft_cap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
        scores = torch.tanh(scores / self.logits_soft_cap) * self.logits_soft_cap + mask.float()
        return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)

    def forward(self, q, k, v, k_cache, v_cache, md: AttentionMetadata) -> torch.Tensor:
        num_slots = k_cache.shape[0] * k_cache.shape[1]
        flat_k = k_cache.view(num_slots, self.num_kv_heads, self.head_dim)
        flat_v = v_cache.view(num_slots, self.num_kv_heads, self.head_dim)
        write = md.slot_mapping >= 0
        if bool(write.all()):
            flat_k.index_copy_(0, md.slot_mapping, k)
            flat_v.index_copy_(0, md.slot_mapping, v)
        else:
            flat_k.index_copy_(0, md.slot_mapping[write], k[write])
            flat_v.index_copy_(0, md.slot_mapping[write], v[write])

        state = md.backend_state
        H, KVH, D = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // KVH
        out = torch.empty_like(q)
        nd = md.num_decode_tokens
        if nd:
            tables = state["decode_tables"]
            kd, vd = _gather_blocks(k_cache, tables), _gather_blocks(v_cache, tables)
            qd = q[:nd].view(nd, KVH, G, D)
            out[:nd] = self._attend(qd, kd, vd, self._mask(md, "decode", q.dtype)).reshape(nd, H, D)
        if md.num_prefills:
            P, Lq = md.num_prefills, md.max_prefill_query_len
            tables = state["prefill_tables"]
            kp, vp = _gather_blocks(k_cache, tables), _gather_blocks(v_cache, tables)
            qp = q[nd:][state["prefill_gather"]].view(P, Lq, KVH, G, D)
            qp = qp.permute(0, 2, 3, 1, 4).reshape(P, KVH, G * Lq, D)
            mask = self._mask(md, "prefill", q.dtype)  # [P, Lq, Lk]
            mask = mask.unsqueeze(1).expand(P, G, Lq, mask.shape[-1]).reshape(P, 1, G * Lq, -1)
            op = self._attend(qp, kp, vp, mask)  # [P, KVH, G*Lq, D]
            op = op.view(P, KVH, G, Lq, D).permute(0, 3, 1, 2, 4).reshape(P * Lq, H, D)
            out[nd:] = op[state["prefill_valid"]]
        return out
