"""The fp8 row kernel (``kernels/cpu_fp8``) against float64 references written from the e4m3fn spec.

Three compiled variants run: the machine's best (-march=native: AVX-512 here), one without AVX-512
(AVX2 decoding) and one without AVX (plain C). Dequantizing must equal the spec value times the scale
rounded once to float32, for every finite byte; a product of k terms must be within k + 1 float32
roundings of the float64 one, for 1..256 activation rows and odd shapes.
"""
import numpy as np
import pytest
import torch

from fp8_reference import E4M3_TABLE, product_bound, random_fp8, reference_weight
from pagedllm.kernels import cpu_fp8
from pagedllm.quantization.fp8_weight import Fp8Weight, quantize_per_channel

VARIANTS = {"native": (), "no-avx512": ("-mno-avx512f",), "no-avx": ("-mno-avx",)}
ROWS = [1, 2, 7, 16, 17, 64, 256]
SHAPES = [(40, 328), (24, 200), (8, 7), (13, 97), (64, 64)]  # (out, in): odd tails of the 8-wide decode


@pytest.fixture(params=list(VARIANTS))
def lib(request):
    built = cpu_fp8.load(VARIANTS[request.param])
    assert built is not None, "the fp8 kernel must build on the test machine (gcc is part of the image)"
    return built


def test_every_byte_decodes_to_its_spec_value(lib):
    codes = torch.arange(256, dtype=torch.uint8).repeat(3, 1)
    finite = ~np.isnan(E4M3_TABLE)
    scales = torch.tensor([1.0, 0.37, 3e-3])
    got = cpu_fp8.dequantize(codes.view(torch.float8_e4m3fn), scales, lib).double().numpy()
    np.testing.assert_array_equal(got[:, finite], reference_weight(codes, scales)[:, finite])
    # torch's own float8 conversion agrees with the spec table (the torch fallback path relies on it)
    torch_values = codes[0].view(torch.float8_e4m3fn).double().numpy()
    np.testing.assert_array_equal(torch_values[finite], E4M3_TABLE[finite])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dequantize_equals_the_spec_reference(lib, shape):
    codes, scales = random_fp8(*shape, seed=shape[1])
    np.testing.assert_array_equal(cpu_fp8.dequantize(codes, scales, lib).double().numpy(),
                                  reference_weight(codes, scales))


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matmul_matches_float64(lib, shape, rows):
    codes, scales = random_fp8(*shape, seed=rows)
    reference = reference_weight(codes, scales)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    out = cpu_fp8.matmul(x, codes, scales, lib).double().numpy()
    xd = x.double().numpy()
    assert np.all(np.abs(out - xd @ reference.T) <= product_bound(xd, reference))


@pytest.mark.parametrize("shape", [(24, 200), (13, 97)], ids=["32-and-8-column-steps", "scalar-tail"])
def test_a_row_gives_the_same_result_in_any_batch(shape):
    """One row (decode: decoded in registers) gives the bits of the same row in a batch (decoded into the
    buffer, then cpu_dot.h's dot): the same weights summed in the same order."""
    codes, scales = random_fp8(*shape, seed=4)
    x = torch.randn(9, shape[1], generator=torch.Generator().manual_seed(0))
    batch = cpu_fp8.matmul(x, codes, scales)
    for i in range(9):
        assert torch.equal(cpu_fp8.matmul(x[i:i + 1], codes, scales)[0], batch[i])


def test_quantize_per_channel_follows_amax_over_448():
    """scale = amax / 448 per row; codes are the nearest e4m3 values of row / scale (checked against the
    spec table: no code is farther from its value than another finite code), all-zero rows get scale 1."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 50, generator=gen) * torch.tensor([1.0, 1e-3, 30.0, 0.0, 1.0, 2.0])[:, None]
    codes, scales = quantize_per_channel(w.bfloat16())
    w64 = w.bfloat16().double().numpy()
    amax = np.abs(w64).max(axis=1)
    np.testing.assert_allclose(scales.double().numpy(), np.where(amax > 0, amax / 448, 1.0), rtol=1e-7)
    finite = E4M3_TABLE[~np.isnan(E4M3_TABLE)]
    target = w64 / scales.double().numpy()[:, None]
    got = E4M3_TABLE[codes.view(torch.uint8).numpy().astype(np.int64)]
    nearest = np.abs(target[..., None] - finite).min(axis=-1)
    assert np.all(np.abs(got - target) <= nearest + 1e-9 * np.abs(target))
    assert np.all(np.abs(got).max(axis=1)[amax > 0] == 448)


@pytest.mark.parametrize("rows", [3, 40])  # the row kernel and the dequantize + GEMM path
def test_weight_matmul_paths_and_torch_fallback(monkeypatch, rows):
    codes, scales = random_fp8(24, 200, seed=rows)
    weight, reference = Fp8Weight(codes, scales), reference_weight(codes, scales)
    x = torch.randn(rows, 200, generator=torch.Generator().manual_seed(rows))
    xd = x.double().numpy()
    expected = xd @ reference.T
    assert np.all(np.abs(weight.matmul(x).double().numpy() - expected) <= product_bound(xd, reference))
    monkeypatch.setattr(cpu_fp8, "load", lambda *a: None)  # PAGEDLLM_CPU_KERNEL=0, or no compiler
    assert np.all(np.abs(weight.matmul(x).double().numpy() - expected) <= product_bound(xd, reference))


def test_gemm_path_in_row_tiles(monkeypatch):
    """A weight larger than one dequantized tile is multiplied tile by tile, with the same result."""
    from pagedllm.quantization import fp8_weight

    codes, scales = random_fp8(50, 64, seed=9)
    weight, reference = Fp8Weight(codes, scales), reference_weight(codes, scales)
    monkeypatch.setattr(fp8_weight, "TILE_WEIGHTS", 64 * 7)  # 7 rows a tile: 8 tiles, the last partial
    x = torch.randn(33, 64, generator=torch.Generator().manual_seed(2))
    xd = x.double().numpy()
    assert np.all(np.abs(weight.matmul(x).double().numpy() - xd @ reference.T) <= product_bound(xd, reference))


def test_bad_layouts_are_refused():
    codes, scales = random_fp8(8, 16, seed=0)
    with pytest.raises(ValueError, match=r"x must be \[rows, 16\]"):
        cpu_fp8.matmul(torch.zeros(2, 15), codes, scales)
    with pytest.raises(ValueError, match=r"scales must be a contiguous CPU torch.float32 tensor of shape \[8\]"):
        cpu_fp8.matmul(torch.zeros(2, 16), codes, scales.double())
