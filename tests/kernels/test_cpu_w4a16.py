"""The GPTQ/AWQ row kernel (``kernels/cpu_w4a16``) against float64 references written from the formats' specs.

Both compiled variants run: the machine's best (AVX2+FMA here) and a build without AVX (plain C).
Dequantizing must equal the spec reference exactly (every value is exact in float32); a product of k
terms must be within k float32 roundings of the float64 one (|error| <= k * 2^-24 * sum |x||w|), for
1..256 activation rows, odd shapes, group sizes 32/64/128/-1, GPTQ desc_act and AWQ.
"""
import numpy as np
import pytest
import torch

from pagedllm.kernels import cpu_w4a16
from pagedllm.quantization.w4a16_format import unpack_awq, unpack_gptq
from pagedllm.quantization.w4a16_weight import W4A16Weight
from w4a16_reference import awq_tensors, gptq_tensors, product_bound, reference_awq, reference_gptq

VARIANTS = {"native": (), "no-avx": ("-mno-avx",)}
ROWS = [1, 2, 7, 16, 17, 64, 256]
# (method, bits, group_size, desc_act, in_features, out_features): odd multiples of the packing
CASES = [("gptq", 4, 32, False, 328, 40), ("gptq", 4, 64, True, 200, 24), ("gptq", 8, 128, True, 392, 8),
         ("gptq", 4, -1, False, 136, 56), ("gptq", 8, 32, False, 72, 12), ("awq", 4, 128, False, 264, 40),
         ("awq", 4, 32, False, 97, 16), ("awq", 4, -1, False, 48, 8)]


@pytest.fixture(params=list(VARIANTS))
def lib(request):
    built = cpu_w4a16.load(VARIANTS[request.param])
    assert built is not None, "the w4a16 kernel must build on the test machine (gcc is part of the image)"
    return built


def weight_and_reference(case, seed=0):
    method, bits, group_size, desc_act, in_features, out_features = case
    if method == "gptq":
        tensors = gptq_tensors(in_features, out_features, bits, group_size, desc_act, seed)
        unpacked = unpack_gptq(*tensors, bits, group_size, zero_offset=1)
        return W4A16Weight.from_unpacked(*unpacked, bits=bits), reference_gptq(*tensors, bits, 1)
    tensors = awq_tensors(in_features, out_features, group_size, seed)
    return W4A16Weight.from_unpacked(*unpack_awq(*tensors, group_size), bits=4), reference_awq(*tensors, group_size)


def in_group_order(weight: W4A16Weight, x: torch.Tensor) -> torch.Tensor:
    return x if weight.perm is None else x[:, weight.perm]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_dequantize_equals_the_spec_reference(lib, case):
    weight, reference = weight_and_reference(case)
    got = cpu_w4a16.dequantize(weight, lib)
    if weight.perm is not None:  # back to the checkpoint's column order
        got = torch.empty_like(got).index_copy_(1, weight.perm, got)
    np.testing.assert_array_equal(got.double().numpy(), reference)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("case", CASES[:5] + CASES[6:7], ids=lambda c: "-".join(map(str, c)))
def test_matmul_matches_float64(lib, case, rows):
    weight, reference = weight_and_reference(case, seed=rows)
    x = torch.randn(rows, weight.cols, generator=torch.Generator().manual_seed(rows))
    out = cpu_w4a16.matmul(in_group_order(weight, x), weight, lib).double().numpy()
    expected = x.double().numpy() @ reference.T
    assert np.all(np.abs(out - expected) <= product_bound(x.double().numpy(), reference))


def test_groups_with_odd_boundaries():
    """A group that starts on a high nibble (g_idx groups of odd sizes) is read from the right half-byte."""
    gen = torch.Generator().manual_seed(3)
    in_features, out_features, groups = 64, 16, 5
    g_idx = torch.sort(torch.randint(0, groups, (in_features,), generator=gen)).values.to(torch.int32)
    g_idx[:groups] = torch.arange(groups, dtype=torch.int32)  # every group present
    g_idx = torch.sort(g_idx).values
    qweight, qzeros, scales, _ = gptq_tensors(in_features, out_features, 4, 16, False, seed=3)
    scales = scales[:1].repeat(groups, 1)
    qzeros = qzeros[:1].repeat(groups, 1)
    weight = W4A16Weight.from_unpacked(*unpack_gptq(qweight, qzeros, scales, g_idx, 4, 16, 1), bits=4)
    assert (weight.group_starts % 2 == 1).any()
    reference = reference_gptq(qweight, qzeros, scales, g_idx, 4, 1)
    np.testing.assert_array_equal(cpu_w4a16.dequantize(weight).double().numpy(), reference)
    x = torch.randn(3, in_features, generator=gen)
    expected = x.double().numpy() @ reference.T
    assert np.all(np.abs(cpu_w4a16.matmul(x, weight).double().numpy() - expected)
                  <= product_bound(x.double().numpy(), reference))


@pytest.mark.parametrize("case", [CASES[1], CASES[2], ("gptq", 4, 16, False, 120, 16), ("gptq", 8, 24, True, 96, 8)],
                         ids=["32-column-chunks", "8-bit", "groups-of-16", "8-bit-groups-of-24"])
def test_a_row_gives_the_same_result_in_any_batch(case):
    """One row (decode: dequantized in registers, 32 or 8 columns at a time) gives the bits of the same row
    in a batch (dequantized into the buffer): the same values summed in the same order."""
    weight, reference = weight_and_reference(case)
    x = torch.randn(9, weight.cols, generator=torch.Generator().manual_seed(0))
    batch = cpu_w4a16.matmul(in_group_order(weight, x), weight)
    assert np.all(np.abs(batch.double().numpy() - x.double().numpy() @ reference.T)
                  <= product_bound(x.double().numpy(), reference))
    for i in range(9):
        assert torch.equal(cpu_w4a16.matmul(in_group_order(weight, x[i:i + 1]), weight)[0], batch[i])


def test_bad_layouts_are_refused():
    weight, _ = weight_and_reference(CASES[0])
    with pytest.raises(ValueError, match=r"x must be \[rows, 328\]"):
        cpu_w4a16.matmul(torch.zeros(2, 327), weight)
    weight.scales = weight.scales.double()
    with pytest.raises(ValueError, match=r"scales must be a contiguous CPU torch.float32 tensor"):
        cpu_w4a16.matmul(torch.zeros(2, 328), weight)


def test_without_the_kernel_the_torch_path_gives_the_same_values(monkeypatch):
    """PAGEDLLM_CPU_KERNEL=0 (or no compiler): W4A16Weight.matmul dequantizes in torch; same oracle."""
    weight, reference = weight_and_reference(CASES[1])
    monkeypatch.setattr(cpu_w4a16, "load", lambda *a: None)
    x = torch.randn(5, weight.cols, generator=torch.Generator().manual_seed(5))
    out = weight.matmul(x).double().numpy()
    assert np.all(np.abs(out - x.double().numpy() @ reference.T) <= product_bound(x.double().numpy(), reference))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_batch_in_bf16_matches_float64(case):
    """Rows > SMALL_BATCH in a bf16 model: AMX tiles from the codes where the CPU has AMX-BF16 (odd in_features
    padded to whole tiles), else the dequantized weight and torch's bf16 GEMM. Oracle: the spec's weights and
    the activations rounded to bf16, in float64; float32 sums (k roundings) plus a bf16 result's rounding."""
    weight, reference = weight_and_reference(case, seed=5)
    w64 = torch.from_numpy(reference).bfloat16().double()
    for m in (17, 100):
        x = torch.randn(m, weight.cols, generator=torch.Generator().manual_seed(m)).bfloat16()
        got = weight.matmul(x).double()
        want = x.double() @ w64.T
        bound = weight.cols * 2.0 ** -24 * (x.double().abs() @ w64.abs().T) + 2.0 ** -8 * want.abs()
        assert bool(((got - want).abs() <= bound).all()), f"m={m}: max err {(got - want).abs().max():.3g}"


def test_amx_matmul_is_absent_without_avx512():
    lib = cpu_w4a16.load(("-mno-avx512f",))
    weight, _ = weight_and_reference(CASES[0])
    assert not cpu_w4a16.has_amx(lib) and cpu_w4a16.matmul_amx(torch.randn(20, weight.cols), weight, lib) is None


@pytest.mark.parametrize("case", CASES[:2] + CASES[5:6], ids=lambda c: f"{c[0]}{c[1]}g{c[2]}")
@pytest.mark.parametrize("m", [1, 17, 40])
def test_amx_bf16_out_is_the_float32_out_rounded(case, m):
    """The AMX kernel writing bfloat16 itself (what a bf16 model's layer asks for) gives the bits of its float32
    output rounded by torch's .to(torch.bfloat16): partial tiles of rows and columns included."""
    if not cpu_w4a16.has_amx():
        pytest.skip("no AMX-BF16 on this CPU (or kernel): the tile path cannot run here")
    weight, reference = weight_and_reference(case)
    x = torch.randn(m, weight.cols, generator=torch.Generator().manual_seed(m)).bfloat16()
    xk = x if weight.perm is None else x.index_select(1, weight.perm)  # the kernel takes the weight's column order
    f32 = cpu_w4a16.matmul_amx(xk, weight)
    bf16 = cpu_w4a16.matmul_amx(xk, weight, out_dtype=torch.bfloat16)
    assert f32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, f32.to(torch.bfloat16))
    w64 = torch.from_numpy(reference).bfloat16().double()  # the oracle: the spec's weights, in float64
    want = x.double() @ w64.T
    bound = weight.cols * 2.0 ** -24 * (x.double().abs() @ w64.abs().T) + 2.0 ** -8 * want.abs()
    assert bool(((bf16.double() - want).abs() <= bound).all())
