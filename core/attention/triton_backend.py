"""The Triton attention backend (GPU): paged decode and varlen prefill kernels.

Per layer: write the step's K/V into the cache, then one decode launch (plus its split merge)
over the decode tokens and one prefill launch over all prefill chunks, both writing straight
into slices of one output tensor.
"""
from __future__ import annotations

import os

import torch
import triton  # noqa: F401  (an ImportError here tells the plugin that triton is absent)

from pagedllm.attention.backend import AttentionBackend, AttentionMetadata


def _kernels():
    """The kernel modules, imported on first use.

    ``triton.jit`` picks compiled or interpreted (``TRITON_INTERPRET=1``) at decoration time, so
    importing them lazily lets tests set that variable after this module is loaded.
    """
    from pagedllm.kernels import decode_attention, prefill_attention, store_kv

    return store_kv.store_kv, decode_attention.paged_decode_attention, \
        prefill_attention.paged_prefill_attention


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels; CUDA tensors (CPU only under TRITON_INTERPRET=1)."""

    name = "triton"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.alibi_slopes is not None:
            raise ValueError("attention_backend='triton' does not support alibi_slopes (ALiBi models such as "
                             "Falcon-RW and Baichuan-13B); use attention_backend='torch'")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"attention_backend='triton' needs CUDA tensors (got {q.device}); "
                             "use attention_backend='torch' on CPU")
        store_kv, decode, prefill = _kernels()
        md = metadata
        store_kv(k, v, k_cache, v_cache, md.slot_mapping)
        out = torch.empty_like(q)
        nd = md.num_decode_tokens
        if nd:
            decode(q[:nd], k_cache, v_cache, md.decode_block_tables, md.decode_context_lens,
                   self.scale, self.sliding_window, self.logits_soft_cap,
                   max_context_len=md.max_decode_context_len, out=out[:nd],
                   workspace=md.backend_state.triton_workspace)
        if md.num_prefills:
            prefill(q[nd:], k_cache, v_cache, md.prefill_block_tables,
                    md.prefill_query_start_loc, md.prefill_context_lens,
                    self.scale, self.sliding_window, self.logits_soft_cap,
                    max_query_len=md.max_prefill_query_len,
                    max_context_len=md.max_prefill_context_len, out=out[nd:])
        return out
