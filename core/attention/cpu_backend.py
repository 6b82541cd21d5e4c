"""CPU attention backend: the torch backend, with decodes through the C paged-decode kernel.

Decode attention dominates a CPU step once batches are large, and on the torch path it is
bound by gathering K/V blocks into a padded copy. ``pagedllm.kernels.cpu_decode`` reads the
paged cache in place instead, and a C loop of row copies writes each step's K/V into it.
Everything else (prefill chunks, and decodes or writes the C code does not cover: other
dtypes, very large heads) is the torch backend's code, which also serves as the C code's
oracle in the tests.
"""
from __future__ import annotations

import torch

from pagedllm.attention.backend import AttentionMetadata
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.kernels import cpu_decode


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slopes = None if self.alibi_slopes is None else torch.tensor(self.alibi_slopes, dtype=torch.float32)
        self._lib = cpu_decode.load()  # once per layer, at load; None: the torch backend's code throughout

    @staticmethod
    def available() -> bool:
        """True when the kernel compiled and loaded on this machine."""
        return cpu_decode.load() is not None

    def _write_cache(self, k, v, k_cache, v_cache, md: AttentionMetadata) -> None:
        if self._lib is None or not cpu_decode.store_kv(self._lib, k, v, k_cache, v_cache, md.slot_mapping):
            super()._write_cache(k, v, k_cache, v_cache, md)

    def _decode(self, q, k_cache, v_cache, md: AttentionMetadata, out) -> None:
        # per call only what the tensors decide: their dtypes, shapes past the kernel's buffers
        if self._lib is not None and cpu_decode.supports(q, k_cache):
            done = cpu_decode.paged_decode(self._lib, q, k_cache, v_cache, md.decode_block_tables, md.decode_context_lens,
                                           md.max_decode_context_len, self.scale, self.sliding_window,
                                           self.logits_soft_cap, self._slopes, out=out)
            if done is not None:
                return
        super()._decode(q, k_cache, v_cache, md, out)
