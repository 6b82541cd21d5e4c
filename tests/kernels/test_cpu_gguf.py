"""The GGUF block kernels (``kernels/cpu_gguf``) against float64 references built from ``gguf.quants.dequantize``.

Both compiled variants run: the machine's best (AVX2+FMA here, AVX-512 where present) and a build
without AVX (plain C). Dequantizing must equal the ``gguf`` package's float32 values bit for bit;
a product of k terms must be within k float32 roundings of the float64 one (|error| <= k * 2^-24 *
sum |x||w|, the textbook bound of a float32 dot product), for 1..256 activation rows.
"""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from pagedllm.kernels import cpu_gguf

VARIANTS = {"native": (), "no-avx": ("-mno-avx",)}
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
ROWS = [1, 2, 7, 16, 64, 256]


def _lib(variant):
    lib = cpu_gguf.load(VARIANTS[variant])
    assert lib is not None, "the GGUF kernel must build on the test machine (gcc is part of the image)"
    return lib


def make_blocks(name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, row_bytes] of type ``name``: quantized by ``gguf`` where it can, else (K-quants) random
    blocks with small positive fp16 scales, as a real quantizer's would be."""
    rng = np.random.default_rng(seed)
    if name not in K_QUANTS:
        return quants.quantize(rng.standard_normal((rows, k)).astype(np.float32), GGMLQuantizationType[name])
    _, block, size = cpu_gguf.BLOCKS[name]
    raw = rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)

    def scales():
        return (rng.random((rows, k // block)) * 0.01 + 1e-4).astype(np.float16).view(np.uint8).reshape(rows, -1, 2)

    if name == "Q6_K":
        raw[..., 208:210] = scales()
    elif name == "Q3_K":
        raw[..., 108:110] = scales()
    elif name == "Q2_K":
        raw[..., 80:82], raw[..., 82:84] = scales(), scales()
    else:
        raw[..., 0:2], raw[..., 2:4] = scales(), scales()
    return raw.reshape(rows, -1)


def _reference(blocks: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType[name]).astype(np.float32))


def _ks(name):
    return (256, 768) if name in K_QUANTS else (32, 96, 576)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(cpu_gguf.BLOCKS))
def test_dequantize_equals_gguf_package(variant, name):
    for k in _ks(name):
        blocks = make_blocks(name, 33, k, seed=k)
        got = cpu_gguf.dequantize(torch.from_numpy(blocks), cpu_gguf.TYPE_IDS[name], k, lib=_lib(variant))
        assert torch.equal(got, _reference(blocks, name)), f"{name} k={k}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(cpu_gguf.BLOCKS))
def test_matmul_matches_float64(variant, name):
    gen = torch.Generator().manual_seed(0)
    for k in _ks(name):
        blocks = make_blocks(name, 45, k, seed=k)  # 45 weight rows: not a multiple of any thread split
        w64 = _reference(blocks, name).double()
        for m in ROWS:
            x = torch.randn(m, k, generator=gen)
            got = cpu_gguf.matmul(x, torch.from_numpy(blocks), cpu_gguf.TYPE_IDS[name], k, lib=_lib(variant))
            want = x.double() @ w64.T
            bound = k * 2.0 ** -24 * (x.double().abs() @ w64.abs().T)
            assert got.shape == (m, 45) and got.dtype == torch.float32
            err = (got.double() - want).abs()
            assert bool((err <= bound).all()), f"{name} k={k} m={m}: max err {err.max():.3g}"


def test_a_row_gives_the_same_result_in_any_batch():
    """Each output is one fixed dot product: a row alone equals the same row among 255 others, bit for bit."""
    blocks = torch.from_numpy(make_blocks("Q4_1", 64, 576))
    x = torch.randn(256, 576, generator=torch.Generator().manual_seed(1))
    batch = cpu_gguf.matmul(x, blocks, cpu_gguf.TYPE_IDS["Q4_1"], 576)
    for i in (0, 100, 255):
        assert torch.equal(cpu_gguf.matmul(x[i:i + 1], blocks, cpu_gguf.TYPE_IDS["Q4_1"], 576)[0], batch[i])


def test_strided_and_bf16_activations_are_taken():
    blocks = torch.from_numpy(make_blocks("Q8_0", 8, 64))
    x = torch.randn(4, 128)[:, :64]  # rows 128 apart
    want = cpu_gguf.matmul(x.contiguous(), blocks, cpu_gguf.TYPE_IDS["Q8_0"], 64)
    assert torch.equal(cpu_gguf.matmul(x, blocks, cpu_gguf.TYPE_IDS["Q8_0"], 64), want)
    assert cpu_gguf.matmul(x.bfloat16(), blocks, cpu_gguf.TYPE_IDS["Q8_0"], 64).shape == (4, 8)


def test_bad_shapes_and_types_are_refused():
    blocks = torch.from_numpy(make_blocks("Q4_0", 4, 64))
    q4_0 = cpu_gguf.TYPE_IDS["Q4_0"]
    with pytest.raises(ValueError, match=r"k=48 must be a positive multiple of Q4_0's block of 32"):
        cpu_gguf.matmul(torch.randn(1, 48), blocks, q4_0, 48)
    with pytest.raises(ValueError, match=r"qweight must be uint8 \[rows, 18\]"):
        cpu_gguf.matmul(torch.randn(1, 32), blocks, q4_0, 32)
    with pytest.raises(ValueError, match="x has 32 features, the weight 64"):
        cpu_gguf.matmul(torch.randn(1, 32), blocks, q4_0, 64)
    with pytest.raises(ValueError, match=r"qtype=16 has no CPU kernel; supported: Q4_0, Q4_1, .*Q2_K, Q3_K, .*Q6_K"):
        cpu_gguf.matmul(torch.randn(1, 256), torch.zeros(4, 66, dtype=torch.uint8), 16, 256)  # IQ2_XXS


# The batch path (rows > SMALL_BATCH) in a bf16 model: the weights rounded to bf16 by the C kernel, then AMX
# tiles from the blocks (native build on an AMX-BF16 CPU) or torch's bf16 GEMM on dequantized tiles (a build
# without AVX-512, any CPU). Oracle: the gguf package's weights and the activations rounded to bf16, in float64.
BATCH_VARIANTS = {"native": (), "no-avx512": ("-mno-avx512f",), "no-avx": ("-mno-avx",)}


@pytest.mark.parametrize("variant", sorted(BATCH_VARIANTS))
@pytest.mark.parametrize("name", sorted(cpu_gguf.BLOCKS))
def test_bf16_dequantize_equals_the_package_rounded(variant, name):
    lib = cpu_gguf.load(BATCH_VARIANTS[variant])
    for k in _ks(name):
        blocks = make_blocks(name, 33, k, seed=k + 1)
        got = cpu_gguf.dequantize(torch.from_numpy(blocks), cpu_gguf.TYPE_IDS[name], k, lib=lib, dtype=torch.bfloat16)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, _reference(blocks, name).bfloat16()), f"{name} k={k}"  # equal values (0.0 == -0.0)


def _bf16_bound(x64, w64, k, out_bf16):
    """float32 sums of exact bf16 products (k roundings), plus one bf16 rounding of the result where it is bf16."""
    bound = k * 2.0 ** -24 * (x64.abs() @ w64.abs().T)
    return bound + (2.0 ** -8 * (x64 @ w64.T).abs() if out_bf16 else 0)


@pytest.mark.parametrize("variant", ["native", "no-avx512"])
@pytest.mark.parametrize("name", sorted(cpu_gguf.BLOCKS))
def test_batch_matmul_in_bf16_matches_float64(monkeypatch, variant, name):
    from pagedllm.quantization.gguf_weight import GGUFWeight

    lib = cpu_gguf.load(BATCH_VARIANTS[variant])
    monkeypatch.setattr(cpu_gguf, "load", lambda extra_flags=(): lib)
    gen = torch.Generator().manual_seed(2)
    for k in _ks(name)[-1:]:
        blocks = make_blocks(name, 77, k, seed=k)  # 77 weight rows: a partial 32-row slice and tile
        w64 = _reference(blocks, name).bfloat16().double()
        weight = GGUFWeight(torch.from_numpy(blocks), cpu_gguf.TYPE_IDS[name], 77, k)
        for m in (17, 100, 256):
            x = torch.randn(m, k, generator=gen).bfloat16()
            got = weight.matmul(x)
            err = (got.double() - x.double() @ w64.T).abs()
            bound = _bf16_bound(x.double(), w64, k, got.dtype == torch.bfloat16)
            assert got.shape == (m, 77) and bool((err <= bound).all()), f"{name} k={k} m={m}: max err {err.max():.3g}"


def test_amx_path_is_taken_where_the_cpu_has_it():
    """On an AMX-BF16 CPU the native build multiplies on tiles; the build without AVX-512 has no AMX path."""
    assert not cpu_gguf.has_amx(cpu_gguf.load(("-mno-avx512f",)))
    blocks = torch.from_numpy(make_blocks("Q4_1", 8, 64))
    assert cpu_gguf.matmul_amx(torch.randn(20, 64), blocks, 3, 64, lib=cpu_gguf.load(("-mno-avx512f",))) is None
    flags = open("/proc/cpuinfo").read()
    if "amx_bf16" not in flags:
        pytest.skip("this CPU has no AMX-BF16: the tile path cannot run here (the dequantized-GEMM path is tested)")
    assert cpu_gguf.has_amx()


def test_amx_row_gives_the_same_result_in_any_batch():
    if not cpu_gguf.has_amx():
        pytest.skip("no AMX-BF16 on this CPU (or kernel): nothing to check")
    blocks = torch.from_numpy(make_blocks("Q4_K", 40, 512))
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(4)).bfloat16()
    batch = cpu_gguf.matmul_amx(x, blocks, cpu_gguf.TYPE_IDS["Q4_K"], 512)
    for i in (0, 17, 255):
        alone = cpu_gguf.matmul_amx(x[i:i + 1], blocks, cpu_gguf.TYPE_IDS["Q4_K"], 512)
        assert torch.equal(alone[0], batch[i])


@pytest.mark.parametrize("name", ["Q4_1", "Q4_K", "Q8_0"])
@pytest.mark.parametrize("m", [1, 17, 40])
def test_amx_bf16_out_is_the_float32_out_rounded(name, m):
    """The AMX kernel writing bfloat16 itself (what a bf16 model's layer asks for) gives the bits of its float32
    output rounded by torch's .to(torch.bfloat16): partial tiles of rows (m) and columns (40 weight rows)."""
    if not cpu_gguf.has_amx():
        pytest.skip("no AMX-BF16 on this CPU (or kernel): the tile path cannot run here")
    k = 512
    raw = make_blocks(name, 40, k)
    blocks = torch.from_numpy(raw)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).bfloat16()
    f32 = cpu_gguf.matmul_amx(x, blocks, cpu_gguf.TYPE_IDS[name], k)
    bf16 = cpu_gguf.matmul_amx(x, blocks, cpu_gguf.TYPE_IDS[name], k, out_dtype=torch.bfloat16)
    assert f32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, f32.to(torch.bfloat16))
    w64 = _reference(raw, name).bfloat16().double()  # the oracle: gguf's dequantized weights, in float64
    err = (bf16.double() - x.double() @ w64.T).abs()
    assert bool((err <= _bf16_bound(x.double(), w64, k, True)).all()), f"max err {err.max():.3g}"
    with pytest.raises(ValueError, match="out_dtype=torch.float16 is not supported"):
        cpu_gguf.matmul_amx(x, blocks, cpu_gguf.TYPE_IDS[name], k, out_dtype=torch.float16)
