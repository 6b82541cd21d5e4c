"""Torch attention backend: gather K/V through block tables, then scaled_dot_product_attention.

Runs on CPU (the fast path there) and is the oracle for the Triton kernels. Per step,
``prepare`` turns block tables into flat slot indices and masks once; each layer then does
one gather and one SDPA call for all decodes, and one for all prefill chunks (padded).
GQA is folded into the query length so K/V are never repeated per query head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend, AttentionMetadata


def _slot_indices(block_tables: torch.Tensor, context_lens: torch.Tensor, max_len: int,
                  block_size: int) -> torch.Tensor:
    """[B, max_len] cache slot of each context position; padding points at position 0."""
    pos = torch.arange(max_len, device=block_tables.device)
    valid = pos.unsqueeze(0) < context_lens.unsqueeze(1)
    pos = torch.where(valid, pos.unsqueeze(0), 0)
    blocks = torch.gather(block_tables.long(), 1, pos // block_size)
    return blocks * block_size + pos % block_size


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        state = md.backend_state
        bs = md.block_size
        if md.num_decode_tokens:
            L = md.max_decode_context_len
            state["decode_slots"] = _slot_indices(md.decode_block_tables, md.decode_context_lens, L, bs)
            key_pos = torch.arange(L, device=md.slot_mapping.device)
            # [B, 1, 1, L]: True where the key is inside the context.
            state["decode_key_pos"] = key_pos
            state["decode_mask"] = (key_pos.unsqueeze(0) < md.decode_context_lens.unsqueeze(1))[:, None, None, :]
        if md.num_prefills:
            Lq, Lk = md.max_prefill_query_len, md.max_prefill_context_len
            dev = md.slot_mapping.device
            q_lens = torch.diff(md.prefill_query_start_loc).long()
            ctx = md.prefill_context_lens.long()
            state["prefill_slots"] = _slot_indices(md.prefill_block_tables, md.prefill_context_lens, Lk, bs)
            qi = torch.arange(Lq, device=dev)
            q_valid = qi.unsqueeze(0) < q_lens.unsqueeze(1)  # [P, Lq]
            # Padded [P, Lq] -> packed token index (padding reads token 0 of the chunk).
            start = md.prefill_query_start_loc[:-1].long().unsqueeze(1)
            state["prefill_gather"] = (start + torch.where(q_valid, qi.unsqueeze(0), 0)).reshape(-1)
            state["prefill_valid"] = q_valid.reshape(-1)
            q_pos = (ctx - q_lens).unsqueeze(1) + qi.unsqueeze(0)  # absolute position of each query
            k_pos = torch.arange(Lk, device=dev)
            mask = k_pos.view(1, 1, Lk) <= q_pos.unsqueeze(2)  # causal (also bounds the context)
            state["prefill_q_pos"] = q_pos
            state["prefill_mask"] = mask | ~q_valid.unsqueeze(2) & (k_pos.view(1, 1, Lk) == 0)

    def _window(self, mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        if self.sliding_window is None:
            return mask
        return mask & (k_pos > q_pos - self.sliding_window)

    def _attend(self, q, k, v, mask):
        """q: [B, KVH, G*Lq, D], k/v: [B, KVH, Lk, D], mask broadcastable to [B, 1, G*Lq, Lk]."""
        if self.logits_soft_cap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
        scores = torch.tanh(scores / self.logits_soft_cap) * self.logits_soft_cap
        scores = scores.masked_fill(~mask, float("-inf"))
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
            slots = state["decode_slots"]  # [B, L]
            kd = flat_k[slots].transpose(1, 2)  # [B, KVH, L, D]
            vd = flat_v[slots].transpose(1, 2)
            qd = q[:nd].view(nd, KVH, G, D)
            mask = state["decode_mask"]
            if self.sliding_window is not None:
                q_pos = (md.decode_context_lens.long() - 1).view(nd, 1, 1, 1)
                mask = mask & (state["decode_key_pos"].view(1, 1, 1, -1) > q_pos - self.sliding_window)
            out[:nd] = self._attend(qd, kd, vd, mask).reshape(nd, H, D)
        if md.num_prefills:
            P, Lq = md.num_prefills, md.max_prefill_query_len
            slots = state["prefill_slots"]  # [P, Lk]
            kp = flat_k[slots].transpose(1, 2)  # [P, KVH, Lk, D]
            vp = flat_v[slots].transpose(1, 2)
            qp = q[nd:][state["prefill_gather"]].view(P, Lq, KVH, G, D)
            qp = qp.permute(0, 2, 3, 1, 4).reshape(P, KVH, G * Lq, D)
            mask = state["prefill_mask"]  # [P, Lq, Lk]
            if self.sliding_window is not None:
                k_pos = torch.arange(mask.shape[-1], device=mask.device).view(1, 1, -1)
                mask = mask & ((k_pos > state["prefill_q_pos"].unsqueeze(2) - self.sliding_window)
                               | ~state["prefill_valid"].view(P, Lq, 1))
            mask = mask.unsqueeze(1).expand(P, G, Lq, mask.shape[-1]).reshape(P, 1, G * Lq, -1)
            op = self._attend(qp, kp, vp, mask)  # [P, KVH, G*Lq, D]
            op = op.view(P, KVH, G, Lq, D).permute(0, 3, 1, 2, 4).reshape(P * Lq, H, D)
            out[nd:] = op[state["prefill_valid"]]
        return out
