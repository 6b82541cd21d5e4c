"""``fast_argmax`` returns exactly ``torch.argmax``'s indices (the first maximum of each row); ``row_logsumexp``
equals ``torch.logsumexp``."""
import pytest
import torch

from pagedllm.worker.sampler import fast_argmax


@pytest.mark.parametrize("vocab", [49152, 49153, 32000, 151936, 3000, 2048, 2049])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_indices_as_argmax(vocab, dtype):
    from pagedllm.worker.sampler import _ARGMAX_CHUNK

    assert vocab // _ARGMAX_CHUNK >= 2, "a size that falls through to torch.argmax compares argmax with itself"
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(37, vocab, generator=gen).to(dtype)
    assert torch.equal(fast_argmax(x), x.argmax(dim=-1))


def test_ties_resolve_to_the_first_maximum_across_chunks_and_the_tail():
    x = torch.zeros(6, 4100)
    x[0, [5, 3000]] = 1.0  # two chunks hold the max: the earlier wins
    x[1, [2000, 4099]] = 2.0  # a chunk and the tail tie: the chunk (earlier) wins
    x[2, 4099] = 3.0  # only the tail holds the max
    x[3] = float("-inf")  # nothing allowed: index 0, like argmax
    x[4, 1023:1025] = 5.0  # a tie straddling a chunk boundary
    x[5, 4096] = 1.0
    x[5, 4097] = 1.0  # a tie inside the tail
    assert torch.equal(fast_argmax(x), x.argmax(dim=-1))
    assert fast_argmax(x).tolist() == [5, 2000, 4099, 0, 1023, 4096]


def test_row_logsumexp_equals_torch_and_keeps_its_special_cases():
    from pagedllm.worker.sampler import row_logsumexp

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5000, generator=gen) * 8
    x[1, :100] = float("-inf")  # masked tokens
    torch.testing.assert_close(row_logsumexp(x), torch.logsumexp(x, dim=-1), rtol=1e-6, atol=1e-5)
    x[2] = float("-inf")  # a fully masked row: torch's -inf, not nan
    x[3, 7] = float("inf")
    assert torch.equal(row_logsumexp(x)[2:4], torch.logsumexp(x, dim=-1)[2:4])


@pytest.mark.parametrize("vocab", [49152, 49153, 151936, 12801])
@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fast_topk_same_values_as_topk_and_indices_that_hold_them(vocab, k, dtype):
    """bf16-valued rows have many exact ties, also at the k-th place; rows of -inf and a row
    whose top values all sit in one chunk or in the tail."""
    from pagedllm.worker.sampler import _TOPK_CHUNK, fast_topk

    assert vocab // _TOPK_CHUNK >= 4 * k, "a size that falls through to torch.topk compares topk with itself"
    gen = torch.Generator().manual_seed(vocab + k)
    x = (torch.randn(9, vocab, generator=gen) * 4).to(dtype).float()
    x[1, : vocab // 2] = float("-inf")
    x[2, 64:64 + k] = 100.0  # the whole top k in one chunk
    x[3, vocab - k:] = 50.0 + torch.arange(k, dtype=torch.float32)  # in the tail / last chunk
    x[4] = x[4].round()  # thousands of ties
    vals, idx = fast_topk(x, k)
    want_vals, _ = x.topk(k, dim=-1)
    assert torch.equal(vals, want_vals)
    assert torch.equal(x.gather(1, idx), vals)
    assert all(len(set(row)) == k for row in idx.tolist())  # k distinct tokens
