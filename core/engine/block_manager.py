"""Paged KV-cache bookkeeping: block tables, ref counts and hash-chained prefix caching.

A block holds ``block_size`` tokens of KV for every layer. Full blocks get a hash chained
from the previous block's, so two sequences with the same prefix find the same blocks.
Freed blocks keep their hash until they are handed out again (LRU order), so a prefix can
be found again after its sequence finished.
"""
from __future__ import annotations

from collections import OrderedDict

from pagedllm.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: int | None = None


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


def root_hash(seq: Sequence) -> int | None:
    """The parent of a sequence's first block: its adapter, so that the same prompt under two adapters
    (or under one and the base model) never shares KV blocks."""
    lora = seq.lora_request
    return None if lora is None else hash(("lora", lora.lora_int_id, lora.lora_name))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order (front is evicted first). Values unused.
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        # Prefix-cache statistics, in tokens.
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ---- queries -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by a live sequence (cached-but-free counts as free)."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix caching ------------------------------------------------------------
    def _compute_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        parent = hashes[-1] if hashes else root_hash(seq)
        for i in range(len(hashes), num_full_blocks):
            parent = hash_block(parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))
            hashes.append(parent)

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of ``seq`` (at least one token stays uncached)."""
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []  # prompt_logprobs need the logits of every prompt position: compute them
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._compute_hashes(seq, max_blocks)
        hits = []
        for h in seq.block_hashes[:max_blocks]:
            block_id = self.hash_to_block.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # ---- allocation ----------------------------------------------------------------
    def can_allocate(self, num_new_blocks: int, cached_block_ids: list[int] = (), watermark: int = 0) -> bool:
        # Cached blocks that are currently free stop being free once we take them.
        reused_free = sum(1 for b in cached_block_ids if b in self.free_blocks)
        return self.num_free_blocks - reused_free - num_new_blocks >= watermark

    def _pop_free_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.hash_to_block.get(block.block_hash) == block_id:
                del self.hash_to_block[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block_id

    def allocate_prefix(self, seq: Sequence, cached_block_ids: list[int]) -> int:
        """Attach cached blocks to a newly admitted sequence; returns tokens served from cache."""
        assert not seq.block_table
        for block_id in cached_block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self.free_blocks.pop(block_id)
            block.ref_count += 1
            seq.block_table.append(block_id)
        num_cached = len(cached_block_ids) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += num_cached
        return num_cached

    def fork(self, parent: Sequence, child: Sequence, num_blocks: int) -> None:
        """Let ``child`` share the first ``num_blocks`` (full, computed) blocks of ``parent``.

        For n>1 samples and beams: the prompt's KV is referenced, not copied; the child
        recomputes the tokens after them into its own blocks (its copy of the partial block).
        """
        assert not child.block_table and num_blocks * self.block_size <= parent.num_computed_tokens
        for block_id in parent.block_table[:num_blocks]:
            self.blocks[block_id].ref_count += 1
            child.block_table.append(block_id)
        child.block_hashes = list(parent.block_hashes[:num_blocks])
        child.num_computed_tokens = num_blocks * self.block_size

    def slots_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New blocks required so that ``seq`` can hold ``num_new_tokens`` more computed tokens."""
        return max(0, self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table to cover the step's tokens and publish blocks that become full."""
        for _ in range(self.slots_needed(seq, num_new_tokens)):
            seq.block_table.append(self._pop_free_block())
        if self.enable_prefix_caching:
            num_full = (seq.num_computed_tokens + num_new_tokens) // self.block_size
            self._compute_hashes(seq, num_full)
            for i in range(seq.num_computed_tokens // self.block_size, num_full):
                block = self.blocks[seq.block_table[i]]
                if block.block_hash is None:
                    h = seq.block_hashes[i]
                    block.block_hash = h
                    self.hash_to_block.setdefault(h, block.block_id)

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; unreferenced blocks become free (hash kept)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
                if block.block_hash is None:  # nothing to reuse: hand it out first
                    self.free_blocks.move_to_end(block_id, last=False)
        seq.block_table = []

    def reset_prefix_cache(self) -> None:
        for block_id in self.free_blocks:
            self.blocks[block_id].block_hash = None
        self.hash_to_block = {h: b for h, b in self.hash_to_block.items() if self.blocks[b].ref_count > 0}


class NoKVCache:
    """The block manager of a model that keeps no KV cache (an encoder): every step is whole inputs
    that are computed and dropped, so the scheduler's block questions all answer "room enough"."""

    num_blocks = 0
    num_free_blocks = 1 << 62
    usage = 0.0
    prefix_queries = prefix_hits = 0

    def __init__(self, block_size: int):
        self.block_size = block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return 0

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        return []

    def can_allocate(self, num_new_blocks: int, cached_block_ids: list[int] = (), watermark: int = 0) -> bool:
        return True

    def allocate_prefix(self, seq: Sequence, cached_block_ids: list[int]) -> int:
        return 0

    def slots_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        return 0

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        pass

    def free(self, seq: Sequence) -> None:
        pass

    def reset_prefix_cache(self) -> None:
        pass
