"""The reference twins (the kernels' oracle) vs naive float64 loops, so the oracle is independent.

The attention oracle here never touches the cache or the block tables: it attends over each
sequence's true K/V, one query row at a time.
"""
import math

import pytest
import torch
from paged_cases import make_case, naive_attention, rel_err

from pagedllm.kernels import reference


@pytest.mark.parametrize("sliding_window,soft_cap", [(None, None), (20, None), (None, 3.0),
                                                     (33, 10.0)])
@pytest.mark.parametrize("block_size,num_kv_heads,group", [(16, 2, 1), (32, 1, 4), (16, 2, 3)])
def test_reference_prefill_vs_naive(block_size, num_kv_heads, group, sliding_window, soft_cap):
    seqs = [(1, 1), (9, 1), (block_size, block_size), (block_size + 1, 5), (100, 41), (300, 2)]
    case = make_case(seqs, block_size, num_kv_heads, group, 32, torch.float64, seed=group,
                     device="cpu")
    out = reference.paged_prefill_attention(case.q, case.k_cache, case.v_cache,
                                            case.block_tables, case.query_start_loc,
                                            case.context_lens, 0.3, sliding_window, soft_cap)
    assert rel_err(out, naive_attention(case, 0.3, sliding_window, soft_cap)) < 1e-12


@pytest.mark.parametrize("sliding_window,soft_cap", [(None, None), (16, 4.0)])
def test_reference_decode_vs_naive(sliding_window, soft_cap):
    case = make_case([(c, 1) for c in (1, 15, 16, 17, 64, 1000)], 16, 2, 4, 64, torch.float64,
                     seed=1, device="cpu")
    out = reference.paged_decode_attention(case.q, case.k_cache, case.v_cache, case.block_tables,
                                           case.context_lens, 0.125, sliding_window, soft_cap)
    assert rel_err(out, naive_attention(case, 0.125, sliding_window, soft_cap)) < 1e-12


def test_reference_rms_norm_vs_naive():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(4, 48, generator=g, dtype=torch.float64), torch.randn(
        4, 48, generator=g, dtype=torch.float64)
    w = torch.randn(48, generator=g, dtype=torch.float64)
    out, res = reference.rms_norm(x, w, 1e-6, r)
    for i in range(4):
        s = [x[i, j].item() + r[i, j].item() for j in range(48)]
        rms = math.sqrt(sum(v * v for v in s) / 48 + 1e-6)
        for j in range(48):
            assert math.isclose(res[i, j].item(), s[j], rel_tol=1e-12)
            assert math.isclose(out[i, j].item(), s[j] / rms * w[j].item(), rel_tol=1e-9,
                                abs_tol=1e-12)


@pytest.mark.parametrize("is_neox_style", [True, False])
def test_reference_rotary_vs_complex_rotation(is_neox_style):
    """Rotary as multiplication of (x_a + i x_b) by e^{i theta}, theta from the cache."""
    T, H, D, R = 5, 3, 16, 12
    g = torch.Generator().manual_seed(1)
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(T, 1, D, generator=g, dtype=torch.float64)
    theta = torch.rand(50, R // 2, generator=g, dtype=torch.float64) * 6
    cache = torch.cat([theta.cos(), theta.sin()], dim=-1)
    pos = torch.tensor([0, 3, 49, 7, 7])
    qo, ko = reference.rotary(pos, q, k, cache, D, R, is_neox_style)
    for x, xo in ((q, qo), (k, ko)):
        expect = x.clone()
        for t in range(T):
            for i in range(R // 2):
                a, b = (i, i + R // 2) if is_neox_style else (2 * i, 2 * i + 1)
                z = torch.complex(x[t, :, a], x[t, :, b]) * torch.polar(
                    torch.ones((), dtype=torch.float64), theta[pos[t], i])
                expect[t, :, a], expect[t, :, b] = z.real, z.imag
        torch.testing.assert_close(xo, expect, rtol=1e-12, atol=1e-12)


def test_reference_silu_and_mul_vs_naive():
    x = torch.linspace(-20, 20, 2 * 3 * 8, dtype=torch.float64).reshape(3, 16)
    out = reference.silu_and_mul(x)
    for i in range(3):
        for j in range(8):
            a, b = x[i, j].item(), x[i, 8 + j].item()
            assert math.isclose(out[i, j].item(), a / (1 + math.exp(-a)) * b, rel_tol=1e-12,
                                abs_tol=1e-300)
