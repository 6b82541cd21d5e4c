"""Continuous batching: which sequences run this step, and how many tokens each.

Every step gets a token budget (``max_num_batched_tokens``) and a sequence cap
(``max_num_seqs``). Running sequences go first (decodes and unfinished prefill chunks, oldest
first), then waiting ones are admitted while budget and blocks last. When the cache is full the
newest running sequence is preempted by recompute: its blocks are freed and it goes back to the
front of the queue, so nothing is dropped and nothing deadlocks.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from pagedllm.engine.block_manager import BlockManager
from pagedllm.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step computes the sequence's last known token, so it gets a new one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.max_loras: int | None = None  # with LoRA: most distinct adapters among running sequences
        self._warned_preemption = False
        # Keep a few blocks free when admitting, so running sequences can grow (vLLM: 1%).
        self.watermark_blocks = max(1, int(0.01 * block_manager.num_blocks))

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def num_waiting_requests(self) -> int:
        """Requests (not sequences: ``n`` > 1 makes several of one request) not yet running."""
        return len({seq.request_id for seq in self.waiting})

    def waiting_fills_a_step(self) -> bool:
        """Whether the waiting sequences alone fill the next step (its token budget or its sequence slots)."""
        if len(self.waiting) + len(self.running) >= self.max_num_seqs:
            return True
        return sum(seq.num_tokens - seq.num_computed_tokens for seq in self.waiting) >= self.max_num_batched_tokens

    def schedule(self) -> list[ScheduledSeq]:
        bm = self.block_manager
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted = False

        # 1. Running sequences, oldest first; preempt from the newest end when blocks run out.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while bm.slots_needed(seq, num_new) > bm.num_free_blocks:
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                bm.append_slots(seq, num_new)
                scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
                i += 1
                continue
            break  # seq itself was preempted: it was the newest, nothing after it

        # 2. Admit waiting sequences (not in a step that had to preempt).
        loras, lora_blocked = self._running_loras(), []
        while (self.waiting and budget > 0 and not preempted
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            if loras is not None and seq.lora_request is not None and seq.lora_request.lora_int_id not in loras:
                if len(loras) >= self.max_loras:  # waits for a slot; requests behind it may run
                    lora_blocked.append(self.waiting.popleft())
                    continue
            cached = bm.find_cached_prefix(seq)
            num_cached = len(cached) * bm.block_size
            remaining = seq.num_tokens - num_cached
            if remaining > budget and not self.enable_chunked_prefill:
                break
            num_new = min(remaining, budget)
            new_blocks = bm.blocks_needed(num_cached + num_new) - len(cached)
            if not bm.can_allocate(new_blocks, cached, watermark=self.watermark_blocks if self.running else 0):
                break
            self.waiting.popleft()
            seq.num_computed_tokens = bm.allocate_prefix(seq, cached)
            if seq.metrics.first_scheduled_time is None:
                seq.num_cached_tokens = seq.num_computed_tokens
            bm.append_slots(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
            if loras is not None and seq.lora_request is not None:
                loras.add(seq.lora_request.lora_int_id)
        self.waiting.extendleft(reversed(lora_blocked))
        return scheduled

    def _running_loras(self) -> set[int] | None:
        if self.max_loras is None:
            return None
        return {s.lora_request.lora_int_id for s in self.running if s.lora_request is not None}

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.metrics.num_preemptions += 1
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        if not self._warned_preemption:
            self._warned_preemption = True
            logger.warning(
                "Sequence %s was preempted (recompute) because the KV cache is full. This costs "
                "throughput; give the cache more memory (kv_cache_memory on CPU, "
                "gpu_memory_utilization on GPU) or lower max_num_seqs / max_num_batched_tokens. "
                "Further preemptions are only counted (metrics).", seq.request_id)

    def finish(self, seq: Sequence) -> None:
        """Release a sequence that finished or was aborted, wherever it is."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
