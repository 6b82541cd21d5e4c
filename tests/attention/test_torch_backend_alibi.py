"""ALiBi in the torch attention backend, against a float64 attention written out per sequence.

A mixed step (decodes first, then prefill chunks) over a paged cache with shuffled blocks; the
bias is ``slope[h] * (key_pos - query_pos)`` per query head, so grouped-query layouts (G > 1,
where the backend folds the group into the query length) must pick each head's own slope.
"""
import pytest
import torch

from pagedllm.attention.backend import AttentionMetadata
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.models.layers.attention import alibi_slopes

BS, D = 4, 8


def _step(seqs, num_kv_heads, num_heads, seed=0):
    """seqs: [(context_len, query_len)], decodes (query_len 1) first. Returns the pieces of one step."""
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-c // BS) for c, _ in seqs]
    perm = torch.randperm(sum(blocks) + 2, generator=g)
    tables = torch.zeros(len(seqs), max(blocks) + 1, dtype=torch.int32)
    k_cache = torch.zeros(len(perm), BS, num_kv_heads, D)
    v_cache = torch.zeros_like(k_cache)
    ks, vs, slots, used = [], [], [], 0
    for s, ((ctx, ql), nb) in enumerate(zip(seqs, blocks)):
        tables[s, :nb] = perm[used:used + nb]
        used += nb
        t = torch.arange(ctx)
        slot = tables[s, t // BS].long() * BS + t % BS
        ks.append(torch.randn(ctx, num_kv_heads, D, generator=g))
        vs.append(torch.randn(ctx, num_kv_heads, D, generator=g))
        k_cache.view(-1, num_kv_heads, D)[slot[:ctx - ql]] = ks[-1][:ctx - ql]  # the prefix is cached
        v_cache.view(-1, num_kv_heads, D)[slot[:ctx - ql]] = vs[-1][:ctx - ql]
        slots.append(slot[ctx - ql:])
    q = torch.randn(sum(ql for _, ql in seqs), num_heads, D, generator=g)
    k_new = torch.cat([k[c - ql:] for k, (c, ql) in zip(ks, seqs)])
    v_new = torch.cat([v[c - ql:] for v, (c, ql) in zip(vs, seqs)])
    nd = _n_dec(seqs)
    pre = seqs[nd:]
    ctx = torch.tensor([c for c, _ in seqs], dtype=torch.int32)
    qlens = [ql for _, ql in pre]
    md = AttentionMetadata(
        slot_mapping=torch.cat(slots), block_size=BS, num_decode_tokens=nd,
        decode_block_tables=tables[:nd], decode_context_lens=ctx[:nd],
        max_decode_context_len=int(ctx[:nd].max()) if nd else 0, num_prefills=len(pre),
        prefill_query_start_loc=torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32),
        prefill_block_tables=tables[nd:], prefill_context_lens=ctx[nd:],
        max_prefill_query_len=max(qlens, default=0), max_prefill_context_len=int(ctx[nd:].max()) if pre else 0,
        decode_context_lens_list=ctx[:nd].tolist(), prefill_query_lens_list=qlens,
        prefill_context_lens_list=ctx[nd:].tolist())
    return q, k_new, v_new, k_cache, v_cache, md, ks, vs


def _n_dec(seqs):
    n = 0
    while n < len(seqs) and seqs[n][1] == 1:
        n += 1
    return n


def _oracle(q, seqs, ks, vs, num_heads, scale, slopes, window=None):
    """Each query of each sequence attends its own keys 0..pos, in float64, one head at a time."""
    out, start = [], 0
    G = num_heads // ks[0].shape[1]
    for (ctx, ql), k, v in zip(seqs, ks, vs):
        for i in range(ql):
            pos = ctx - ql + i
            heads = []
            for h in range(num_heads):
                kh, vh = k[:pos + 1, h // G].double(), v[:pos + 1, h // G].double()
                scores = kh @ q[start + i, h].double() * scale
                if slopes is not None:
                    scores = scores + slopes[h] * (torch.arange(pos + 1) - pos).double()
                if window is not None:
                    scores[:max(0, pos + 1 - window)] = float("-inf")
                heads.append(scores.softmax(0) @ vh)
            out.append(torch.stack(heads))
        start += ql
    return torch.stack(out)


DECODES = [(c, 1) for c in (3, 9, 14, 26, 31, 5, 40, 22, 17, 8, 35, 12, 29, 6, 19, 44)]  # 16: length groups
PREFILLS = [(13, 13), (30, 11), (9, 1), (21, 7)]


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("seqs", [DECODES[:3] + PREFILLS, DECODES + PREFILLS[:2]], ids=["mixed", "grouped-decodes"])
def test_alibi_matches_reference(num_heads, num_kv_heads, seqs):
    scale = D ** -0.5
    slopes = alibi_slopes(num_heads)
    q, k_new, v_new, kc, vc, md, ks, vs = _step(seqs, num_kv_heads, num_heads)
    TorchAttentionBackend.prepare(md)
    alibi = TorchAttentionBackend(num_heads, num_kv_heads, D, scale, alibi_slopes=slopes)
    plain = TorchAttentionBackend(num_heads, num_kv_heads, D, scale)
    out = alibi.forward(q, k_new, v_new, kc, vc, md)
    # A layer without ALiBi in the same step must not pick up the ALiBi mask from the step's cache.
    out_plain = plain.forward(q, k_new, v_new, kc, vc, md)
    want = _oracle(q, seqs, ks, vs, num_heads, scale, slopes)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_plain.double(), _oracle(q, seqs, ks, vs, num_heads, scale, None), atol=1e-5, rtol=0)
    assert (out - out_plain).abs().max() > 1e-2  # the bias matters at these lengths


def test_alibi_with_sliding_window():
    seqs = DECODES[:4] + PREFILLS
    q, k_new, v_new, kc, vc, md, ks, vs = _step(seqs, 2, 4, seed=1)
    TorchAttentionBackend.prepare(md)
    slopes = [0.3, 0.05, 0.7, 0.0]  # arbitrary, one of them zero
    out = TorchAttentionBackend(4, 2, D, 0.5, sliding_window=6, alibi_slopes=slopes).forward(q, k_new, v_new, kc, vc, md)
    torch.testing.assert_close(out.double(), _oracle(q, seqs, ks, vs, 4, 0.5, slopes, window=6), atol=1e-5, rtol=0)


def test_slopes_are_alibi_geometric_series():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    # 12 heads: the 8-head series, then every other slope of the 16-head series.
    assert alibi_slopes(12) == alibi_slopes(8) + [2.0 ** -(i / 2) for i in (1, 3, 5, 7)]


def test_triton_backend_refuses_alibi():
    from pagedllm.attention.triton_backend import TritonAttentionBackend

    with pytest.raises(ValueError, match="alibi_slopes"):
        TritonAttentionBackend(4, 4, D, 0.5, alibi_slopes=alibi_slopes(4))
