"""``fast_argmax`` returns exactly ``torch.argmax``'s indices (the first maximum of each row)."""
import pytest
import torch

from pagedllm.worker.sampler import fast_argmax


@pytest.mark.parametrize("vocab", [49152, 49153, 32000, 151936, 3000, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_indices_as_argmax(vocab, dtype):
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
