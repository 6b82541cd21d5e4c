"""Triton store_kv vs its reference twin: exact copies, -1 slots skipped, nothing else touched."""
import pytest
import torch
from paged_cases import DEVICE

from pagedllm.kernels import reference
from pagedllm.kernels.store_kv import store_kv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,num_kv_heads,head_dim", [(16, 2, 64), (32, 1, 128),
                                                              (16, 3, 80)])
def test_store_kv(block_size, num_kv_heads, head_dim, dtype):
    g = torch.Generator().manual_seed(block_size + head_dim)
    num_blocks, T = 6, 21
    # k and v are views into one fused qkv output (non-contiguous rows), as a model makes them.
    qkv = torch.randn(T, 4 * num_kv_heads * head_dim, generator=g).to(dtype)
    k = qkv[:, 2 * num_kv_heads * head_dim:3 * num_kv_heads * head_dim].view(
        T, num_kv_heads, head_dim)
    v = qkv[:, 3 * num_kv_heads * head_dim:].view(T, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T]
    slots[[0, 5, 20]] = -1  # padding / already-cached tokens
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    kc = torch.full(shape, float("nan"), dtype=dtype)
    vc = torch.full(shape, float("nan"), dtype=dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    reference.store_kv(k, v, kc_ref, vc_ref, slots)
    kc_d, vc_d = kc.to(DEVICE), vc.to(DEVICE)
    store_kv(k.to(DEVICE), v.to(DEVICE), kc_d, vc_d, slots.to(DEVICE))
    assert torch.equal(kc_d.cpu().isnan(), kc_ref.isnan())  # the same slots written
    torch.testing.assert_close(kc_d.cpu(), kc_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc_d.cpu(), vc_ref, rtol=0, atol=0, equal_nan=True)
    # And the reference twin itself wrote what a per-token loop would.
    for t in range(T):
        if slots[t] >= 0:
            b, o = divmod(int(slots[t]), block_size)
            assert torch.equal(kc_ref[b, o], k[t]) and torch.equal(vc_ref[b, o], v[t])
    assert int((~kc_ref.isnan()).all(-1).all(-1).sum()) == T - 3
