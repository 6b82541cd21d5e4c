"""Triton fused ops (RMSNorm(+residual), rotary, SiLU-and-mul) vs reference twins in float64."""
import pytest
import torch
from paged_cases import DEVICE, check

from pagedllm.kernels import fused_ops, reference

DTYPES = [torch.float32, torch.bfloat16]


def _randn(*shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 576, 1000])
def test_rms_norm(hidden, dtype):
    x = _randn(2, 5, hidden, dtype=dtype, seed=1) * 3
    res = _randn(2, 5, hidden, dtype=dtype, seed=2)
    w = _randn(hidden, dtype=dtype, seed=3)
    out = fused_ops.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    check("rms_norm", out, reference.rms_norm(x.double(), w.double(), 1e-6), dtype)
    out, new_res = fused_ops.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-6, res.to(DEVICE))
    ref, ref_res = reference.rms_norm(x.double(), w.double(), 1e-6, res.double())
    check("rms_norm+residual", out, ref, dtype)
    check("rms_norm+residual", new_res, ref_res, dtype)


def test_rms_norm_non_contiguous_rows():
    x = _randn(7, 256, dtype=torch.float32, seed=4)[:, :128]  # row stride 256
    w = _randn(128, dtype=torch.float32, seed=5)
    out = fused_ops.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-5)
    check("rms_norm", out, reference.rms_norm(x.double(), w.double(), 1e-5), torch.float32)


def _cos_sin_cache(max_pos, rotary_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    freqs = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox_style", [True, False])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (80, 32)])
def test_rotary(head_dim, rotary_dim, is_neox_style, dtype):
    T, H, Hkv = 9, 4, 2
    cs = _cos_sin_cache(4096, rotary_dim)
    positions = torch.tensor([0, 1, 2, 17, 100, 511, 2047, 4095, 3])
    # q, k as views into a fused qkv output: 2-D [T, heads*head_dim] with a row stride.
    qkv = _randn(T, (H + 2 * Hkv) * head_dim, dtype=dtype, seed=head_dim)
    q, k = qkv[:, :H * head_dim], qkv[:, H * head_dim:(H + Hkv) * head_dim]
    qo, ko = fused_ops.rotary(positions.to(DEVICE), q.to(DEVICE), k.to(DEVICE),
                              cs.to(dtype).to(DEVICE), head_dim, rotary_dim, is_neox_style)
    qr, kr = reference.rotary(positions, q.double(), k.double(), cs.to(dtype).double(),
                              head_dim, rotary_dim, is_neox_style)
    assert qo.shape == q.shape and ko.shape == k.shape
    check("rotary", qo, qr, dtype)
    check("rotary", ko, kr, dtype)
    # 3-D inputs give the same result.
    qo3, _ = fused_ops.rotary(positions.to(DEVICE), q.reshape(T, H, head_dim).to(DEVICE),
                              k.reshape(T, Hkv, head_dim).to(DEVICE), cs.to(dtype).to(DEVICE),
                              head_dim, rotary_dim, is_neox_style)
    assert torch.equal(qo3.reshape(T, -1).cpu(), qo.cpu())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 1000, 2816])
def test_silu_and_mul(d, dtype):
    x = _randn(3, 4, 2 * d, dtype=dtype, seed=d) * 4
    out = fused_ops.silu_and_mul(x.to(DEVICE))
    assert out.shape == (3, 4, d)
    check("silu_and_mul", out, reference.silu_and_mul(x.double()), dtype)
