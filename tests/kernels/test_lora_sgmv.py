"""The Triton SGMV kernels (interpreted on CPU, compiled on CUDA) against the torch per-segment path
(``punica.add_lora``) and a float64 product: segments of several adapters and ranks, base-model
tokens in between, an adapter that leaves the layer alone, odd sizes."""
import pytest
import torch
from paged_cases import DEVICE

from pagedllm.kernels import lora_sgmv
from pagedllm.lora.punica import LoRAMapping, add_lora


def _case(T, K, N, R, segments, columns, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    slots = len(columns)
    x = torch.randn(T, K, generator=g).to(dtype)
    a = torch.randn(slots, R, K, generator=g).to(dtype) * 0.3
    b = torch.randn(slots, N, R, generator=g).to(dtype) * 0.3
    out = torch.randn(T, N, generator=g).to(dtype)
    return x, a, b, out


@pytest.mark.parametrize("T, K, N, R, segments, columns", [
    (40, 64, 96, 16, [(0, 0, 7), (2, 10, 31), (1, 31, 40)], [8, 16, 4]),
    (33, 50, 70, 8, [(1, 3, 33)], [0, 5]),           # one adapter with rank 5 of 8; slot 0 unused
    (5, 32, 17, 32, [(0, 0, 1), (1, 1, 5)], [32, 0]),  # a decode token, an adapter that skips this layer
])
def test_sgmv_equals_the_torch_path_and_float64(T, K, N, R, segments, columns):
    x, a, b, out = _case(T, K, N, R, segments, columns)
    torch_out = add_lora(out.clone(), x, a, b, columns, LoRAMapping(tuple(segments), T))
    want = out.double().clone()
    for slot, s, e in segments:
        c = columns[slot]
        want[s:e] += x[s:e].double() @ a[slot, :c].double().t() @ b[slot, :, :c].double().t()
    seg = torch.tensor(segments, dtype=torch.int32, device=DEVICE)
    cols = torch.tensor(columns, dtype=torch.int32, device=DEVICE)
    got = lora_sgmv.sgmv_add(out.clone().to(DEVICE), x.to(DEVICE), a.to(DEVICE), b.to(DEVICE), cols, seg,
                             max(e - s for _, s, e in segments)).cpu()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, torch_out, atol=1e-4, rtol=1e-4)
    untouched = torch.ones(T, dtype=torch.bool)
    for slot, s, e in segments:
        if columns[slot]:
            untouched[s:e] = False
    assert torch.equal(got[untouched], out[untouched])  # base-model rows are not written


def test_add_lora_takes_the_kernels_when_the_step_carries_device_tables(monkeypatch):
    """The wiring the LoRA layers use on CUDA: a mapping with ``device_segments`` and a layer's
    ``columns_device`` send ``add_lora`` to the SGMV kernels (interpreted here), with the torch path's result."""
    segments, columns = [(1, 0, 9), (0, 12, 20)], [4, 8]
    x, a, b, out = _case(20, 40, 24, 8, segments, columns, seed=3)
    torch_out = add_lora(out.clone(), x, a, b, columns, LoRAMapping(tuple(segments), 20))
    calls = []
    real = lora_sgmv.sgmv_add
    monkeypatch.setattr(lora_sgmv, "sgmv_add", lambda *a, **k: calls.append(1) or real(*a, **k))
    mapping = LoRAMapping(tuple(segments), 20, torch.tensor(segments, dtype=torch.int32, device=DEVICE), 9)
    got = add_lora(out.clone().to(DEVICE), x.to(DEVICE), a.to(DEVICE), b.to(DEVICE), columns, mapping,
                   torch.tensor(columns, dtype=torch.int32, device=DEVICE))
    torch.testing.assert_close(got.cpu(), torch_out, atol=1e-4, rtol=1e-4)
    assert calls == [1] and not torch.equal(got.cpu(), out)
