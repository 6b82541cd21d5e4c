"""Block manager: ref counts, hash-chained prefix reuse, LRU eviction of freed cached blocks."""
from pagedllm.engine.block_manager import BlockManager
from pagedllm.engine.sequence import Sequence
from pagedllm.sampling_params import SamplingParams


def seq(tokens, rid="r"):
    return Sequence(rid, None, tokens, SamplingParams(), 16)


def run_prefill(bm, s):
    cached = bm.find_cached_prefix(s)
    s.num_computed_tokens = bm.allocate_prefix(s, cached)
    n = s.num_tokens - s.num_computed_tokens
    bm.append_slots(s, n)
    s.num_computed_tokens += n
    return cached


def test_prefix_reuse_refcounts_and_free():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(list(range(10)), "a")  # 2 full blocks + 2 tokens
    assert run_prefill(bm, a) == []
    assert len(a.block_table) == 3 and bm.num_free_blocks == 7
    b = seq(list(range(8)) + [99, 98, 97], "b")  # shares the 2 full blocks
    hits = run_prefill(bm, b)
    assert hits == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    assert bm.num_free_blocks == 6
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 10
    # Freed blocks keep their hash: a third sequence finds them again.
    c = seq(list(range(9)), "c")
    assert len(run_prefill(bm, c)) == 2


def test_different_prefix_same_block_content_does_not_hit():
    bm = BlockManager(num_blocks=10, block_size=4)
    run_prefill(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a"))
    other = seq([0, 0, 0, 0, 5, 6, 7, 8, 9], "b")  # block 2 equal in content, different parent
    assert bm.find_cached_prefix(other) == []


def test_lru_eviction_and_never_caches_last_token():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4], "a")
    run_prefill(bm, a)
    assert len(a.block_table) == 2
    bm.free(a)
    # Exactly the same 4 tokens again: at most (4-1)//2 = 1 block may be served from cache.
    again = seq([1, 2, 3, 4], "b")
    assert len(bm.find_cached_prefix(again)) == 1
    # Filling the cache with other data evicts the cached blocks (LRU), dropping their hashes.
    big = seq([7, 7, 7, 7, 7, 7, 7, 8], "c")
    run_prefill(bm, big)
    assert bm.num_free_blocks == 0
    assert bm.find_cached_prefix(seq([1, 2, 3, 4], "d")) == []


def test_usage_counts_only_referenced_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(8)), "a")
    run_prefill(bm, a)
    assert bm.usage == 2 / 8
    bm.free(a)
    assert bm.usage == 0.0
