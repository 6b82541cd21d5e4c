"""CUDA graphs for decode-only steps (vLLM's CUDAGraphRunner; off with ``enforce_eager=True``).

A decode step of a small model is a few hundred tiny kernel launches from Python: on a GPU the
launches, not the math, set the step time. One graph per batch-size bucket is captured at start
over static input buffers; a step with ``n`` decodes copies its inputs into the first ``n`` rows
of the smallest bucket ``>= n`` and replays it. Padding rows write no K/V (slot -1) and read one
cached token, and their outputs are dropped. Steps with a prefill chunk and batches larger than
the largest bucket run eagerly. The graphs end at the last hidden states: logits and
sampling stay outside (they depend on which rows sample).

``replay`` is a plain re-call of the captured function where there is no CUDA (``emulate``):
that is how the buffer handling is tested on CPU, against the eager step.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch

from pagedllm.attention import AttentionMetadata
from pagedllm.forward_context import set_forward_context

PAD_SLOT = -1


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to ``max_batch`` (vLLM's capture sizes), ascending."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch + 16, 16))
    return sorted({min(b, max_batch) for b in sizes})


class DecodeGraphs:
    """Static buffers and one captured forward per bucket; ``run`` replays the right one."""

    def __init__(self, model: Callable, device: torch.device, max_batch: int, max_model_len: int,
                 block_size: int, emulate: bool = False):
        self.model = model
        self.device = device
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.emulate = emulate
        self.buckets = batch_buckets(max_batch)
        n, width = self.buckets[-1], -(-max_model_len // block_size)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), PAD_SLOT, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(n, width, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.graphs: dict[int, object] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.metadata: dict[int, AttentionMetadata] = {}

    def _metadata(self, bs: int) -> AttentionMetadata:
        empty = torch.zeros(0, dtype=torch.int32, device=self.device)
        return AttentionMetadata(
            slot_mapping=self.slots[:bs], block_size=self.block_size, num_decode_tokens=bs,
            decode_block_tables=self.block_tables[:bs], decode_context_lens=self.context_lens[:bs],
            # the kernels' launch grid must not depend on the step: plan for the longest context
            max_decode_context_len=self.max_model_len, num_prefills=0,
            prefill_query_start_loc=torch.zeros(1, dtype=torch.int32, device=self.device),
            prefill_block_tables=empty.view(0, 1), prefill_context_lens=empty,
            max_prefill_query_len=0, max_prefill_context_len=0,
            decode_context_lens_list=[1] * bs)

    def _forward(self, bs: int) -> torch.Tensor:
        with set_forward_context(self.metadata[bs]):
            return self.model(self.input_ids[:bs], self.positions[:bs])

    @torch.inference_mode()
    def capture(self, backend_prepare: Callable[[AttentionMetadata], None]) -> None:
        """Capture every bucket, largest first (smaller ones then fit in the same memory pool)."""
        pool = None if self.emulate else torch.cuda.graph_pool_handle()
        for bs in reversed(self.buckets):
            self.metadata[bs] = md = self._metadata(bs)
            backend_prepare(md)
            self._forward(bs)  # warm-up outside the graph: Triton compiles here, not while capturing
            if self.emulate:
                self.graphs[bs] = None
                continue
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._forward(bs)
            self.graphs[bs] = graph
        gc.collect()
        if not self.emulate:
            torch.cuda.synchronize()

    def bucket_for(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def run(self, md: AttentionMetadata, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[n, hidden]`` of a decode-only step whose inputs (on the device) are given."""
        n = input_ids.shape[0]
        bs = self.bucket_for(n)
        width = md.decode_block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(md.slot_mapping)
        self.slots[n:bs].fill_(PAD_SLOT)
        self.block_tables[:n, :width].copy_(md.decode_block_tables)
        self.context_lens[:n].copy_(md.decode_context_lens)
        self.context_lens[n:bs].fill_(1)
        if self.emulate:
            return self._forward(bs)[:n]
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
