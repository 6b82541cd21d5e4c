"""TritonAttentionBackend on a mixed step (decodes first, then prefill chunks) vs the reference
twins in float64: the new tokens' K/V start outside the cache and must be stored by the backend."""
import pytest
import torch
from paged_cases import DEVICE, check, make_case

from pagedllm.attention.backend import AttentionMetadata
from pagedllm.attention.triton_backend import TritonAttentionBackend
from pagedllm.kernels import reference


def _step(decodes, prefills, dtype, group=4, num_kv_heads=2, head_dim=64, block_size=16):
    """A case whose new tokens (the last query_len of each sequence) are not yet cached."""
    seqs = [(c, 1) for c in decodes] + list(prefills)
    case = make_case(seqs, block_size, num_kv_heads, group, head_dim, dtype, seed=len(seqs))
    slots = [case.slots(s)[c - ql:] for s, (c, ql) in enumerate(seqs)]
    slots.append(torch.tensor([-1]))  # one padding token, never written
    slot_mapping = torch.cat(slots).to(DEVICE)
    k_new = torch.cat([case.k_seq[s][c - ql:] for s, (c, ql) in enumerate(seqs)]
                      + [torch.full((1, num_kv_heads, head_dim), 7.0).to(dtype)]).to(DEVICE)
    v_new = torch.cat([case.v_seq[s][c - ql:] for s, (c, ql) in enumerate(seqs)]
                      + [torch.full((1, num_kv_heads, head_dim), 7.0).to(dtype)]).to(DEVICE)
    real = slot_mapping[:-1].long()
    bs = block_size
    case.k_cache[real // bs, real % bs] = float("nan")  # not cached yet
    case.v_cache[real // bs, real % bs] = float("nan")
    q = torch.cat([case.q, torch.zeros_like(case.q[:1])])
    nd = len(decodes)
    qsl = case.query_start_loc[nd:] - nd
    md = AttentionMetadata(
        slot_mapping=slot_mapping, block_size=bs, num_decode_tokens=nd,
        decode_block_tables=case.block_tables[:nd], decode_context_lens=case.context_lens[:nd],
        max_decode_context_len=max(decodes, default=0), num_prefills=len(prefills),
        prefill_query_start_loc=qsl, prefill_block_tables=case.block_tables[nd:],
        prefill_context_lens=case.context_lens[nd:],
        max_prefill_query_len=max((ql for _, ql in prefills), default=0),
        max_prefill_context_len=max((c for c, _ in prefills), default=0),
        decode_context_lens_list=list(decodes),
        prefill_query_lens_list=[ql for _, ql in prefills],
        prefill_context_lens_list=[c for c, _ in prefills])
    return case, q, k_new, v_new, md


def _oracle(case, q, k_new, v_new, md, scale, sliding_window, soft_cap):
    kc, vc = case.k_cache.double().cpu(), case.v_cache.double().cpu()
    reference.store_kv(k_new.double().cpu(), v_new.double().cpu(), kc, vc, md.slot_mapping.cpu())
    nd = md.num_decode_tokens
    qd = q.double().cpu()
    dec = reference.paged_decode_attention(qd[:nd], kc, vc, md.decode_block_tables.cpu(),
                                           md.decode_context_lens.cpu(), scale, sliding_window,
                                           soft_cap)
    pre = reference.paged_prefill_attention(qd[nd:], kc, vc, md.prefill_block_tables.cpu(),
                                            md.prefill_query_start_loc.cpu(),
                                            md.prefill_context_lens.cpu(), scale,
                                            sliding_window, soft_cap)
    return torch.cat([dec, pre])[:-1], kc, vc


@pytest.mark.parametrize("dtype,sliding_window,soft_cap", [
    (torch.float32, None, None), (torch.bfloat16, None, None), (torch.float32, 40, 20.0)])
def test_backend_mixed_step(dtype, sliding_window, soft_cap):
    decodes = [1, 17, 1100]
    prefills = [(20, 20), (100, 30), (50, 1), (33, 16)]
    case, q, k_new, v_new, md = _step(decodes, prefills, dtype)
    backend = TritonAttentionBackend(8, 2, 64, 0.125, sliding_window, soft_cap)
    TritonAttentionBackend.prepare(md)
    out = backend.forward(q, k_new, v_new, case.k_cache, case.v_cache, md)
    ref, kc_ref, vc_ref = _oracle(case, q, k_new, v_new, md, 0.125, sliding_window, soft_cap)
    check("triton_backend", out[:-1], ref, dtype)
    # The cache now holds exactly the new tokens where they belong (padding not written).
    torch.testing.assert_close(case.k_cache.double().cpu(), kc_ref, rtol=0, atol=0,
                               equal_nan=True)
    torch.testing.assert_close(case.v_cache.double().cpu(), vc_ref, rtol=0, atol=0,
                               equal_nan=True)
    # A second layer in the same step reuses the split-K workspace and gives the same result.
    out2 = backend.forward(q, k_new, v_new, case.k_cache, case.v_cache, md)
    assert md.backend_state.triton_workspace
    assert torch.equal(out2[:-1], out[:-1])


def test_backend_decode_only_and_prefill_only():
    for decodes, prefills in (([5, 64], []), ([], [(9, 9), (40, 3)])):
        case, q, k_new, v_new, md = _step(decodes, prefills, torch.float32, group=1,
                                          num_kv_heads=4)
        backend = TritonAttentionBackend(4, 4, 64, 0.125)
        out = backend.forward(q, k_new, v_new, case.k_cache, case.v_cache, md)
        ref, _, _ = _oracle(case, q, k_new, v_new, md, 0.125, None, None)
        check("triton_backend", out[:-1], ref, torch.float32)
