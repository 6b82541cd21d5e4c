"""The 8-bit activation path of the GGUF kernel (``cpu_q8.h`` through ``cpu_gguf.matmul(q8_activations=True)``)
against float64 references.

Oracle: the activation rounding written from llama.cpp's spec of its Q8_1 blocks (per 32 values d = max|x| /
127, codes = x / d rounded to nearest even, in float32) plus the second code that carries each rounding error
(cpu_q8.h: (x / d - code) * 128 rounded to nearest even), then a float64 product with the weights the ``gguf``
package dequantizes. The kernel's integer sums are exact, so it must be within float32 roundings of that
product; and against the unrounded activations within the rounding's own bound (each activation moves by at
most d / 256). Three builds run: native (AVX-512 VNNI here), ``-mno-avx512f`` (AVX-VNNI) and
``-mno-avx512f -mno-avxvnni`` (AVX2 vpmaddubsw): their results must be the same bits.
"""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from pagedllm.kernels import cpu_gguf

BUILDS = {"native": (), "no-avx512": ("-mno-avx512f",), "avx2-only": ("-mno-avx512f", "-mno-avxvnni")}
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
KS = (32, 288, 576, 1056)  # 1, 9, 18 and 33 blocks: groups of 8 and the blocks after them
ROWS = (1, 2, 7, 16)


def _lib(build):
    lib = cpu_gguf.load(BUILDS[build])
    assert lib is not None and cpu_gguf.has_q8(lib), "the integer path needs AVX2, which every test machine has"
    return lib


def _blocks(name: str, rows: int, k: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    return quants.quantize(w, GGMLQuantizationType[name])


def _weights64(blocks: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType[name])).double()


def rounded_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the activations as the kernel multiplies them: (code + code2 / 128) x d, float64; d / 256, the most a
    value moves), from the spec."""
    xb = x.numpy().astype(np.float32).reshape(x.shape[0], -1, 32)
    d = (np.abs(xb).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    scaled = (xb * inv).astype(np.float32)
    codes = np.rint(scaled)
    codes2 = np.rint(((scaled - codes) * np.float32(128)).astype(np.float32))
    assert np.abs(codes).max() <= 127 and np.abs(codes2).max() <= 64
    values = torch.from_numpy((codes.astype(np.float64) + codes2.astype(np.float64) / 128) * d.astype(np.float64))
    return values.reshape(x.shape), torch.from_numpy(np.broadcast_to(d / 256, xb.shape).astype(np.float64)
                                                     .reshape(x.shape))


def _q8(x, blocks, name, k, lib, **kwargs):
    return cpu_gguf.matmul(x, torch.from_numpy(blocks), cpu_gguf.TYPE_IDS[name], k, lib=lib, q8_activations=True,
                           **kwargs)


@pytest.mark.parametrize("name", TYPES)
def test_matches_float64_of_the_rounded_activations(name):
    gen = torch.Generator().manual_seed(0)
    for k in KS:
        blocks = _blocks(name, 45, k, seed=k)  # 45 rows: no thread split is even
        w64 = _weights64(blocks, name)
        for m in ROWS:
            x = torch.randn(m, k, generator=gen) * torch.rand(m, k // 32, 1, generator=gen).repeat(1, 1, 32).view(m, k)
            xq, _ = rounded_activations(x)
            got = _q8(x, blocks, name, k, _lib("native"))
            assert got.shape == (m, 45) and got.dtype == torch.float32
            want = xq @ w64.T
            bound = k * 2.0 ** -24 * (xq.abs() @ w64.abs().T) + 1e-30
            err = (got.double() - want).abs()
            assert bool((err <= bound).all()), f"{name} k={k} m={m}: max err {err.max():.3g}"


@pytest.mark.parametrize("name", TYPES)
def test_error_against_the_unrounded_activations_is_the_roundings(name):
    """|result - x . w| <= sum_j |w_j| d_j / 256 (+ float32 roundings): the only approximation is the rounding."""
    k = 576
    blocks = _blocks(name, 64, k, seed=3)
    w64 = _weights64(blocks, name)
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(4))
    _, d = rounded_activations(x)
    got = _q8(x, blocks, name, k, _lib("native")).double()
    err = (got - x.double() @ w64.T).abs()
    bound = d @ w64.abs().T + k * 2.0 ** -23 * (x.double().abs() @ w64.abs().T)
    assert bool((err <= bound).all())
    assert err.max() > 0  # the activations really were rounded (a float path would pass the bound too)


@pytest.mark.parametrize("name", TYPES)
def test_every_build_gives_the_same_bits(name):
    k = 1056
    blocks = _blocks(name, 37, k, seed=5)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(6))
    results = {build: _q8(x, blocks, name, k, _lib(build)) for build in BUILDS}
    for build, got in results.items():
        assert torch.equal(got, results["native"]), build


def test_a_row_gives_the_same_result_in_any_batch():
    blocks = _blocks("Q4_1", 200, 576, seed=7)  # 200 x 576 x 16 rows: split over threads
    x = torch.randn(16, 576, generator=torch.Generator().manual_seed(8))
    batch = _q8(x, blocks, "Q4_1", 576, _lib("native"))
    for i in (0, 9, 15):
        assert torch.equal(_q8(x[i:i + 1], blocks, "Q4_1", 576, _lib("native"))[0], batch[i])
    assert torch.equal(_q8(x, blocks, "Q4_1", 576, _lib("native"), threads=1), batch)


def test_bf16_activations_and_result():
    """bf16 in: the same as its float32 value; bf16 out: the float32 result rounded to nearest even."""
    blocks = torch.from_numpy(_blocks("Q4_1", 40, 288, seed=9))
    run = cpu_gguf.row_kernel(blocks, cpu_gguf.TYPE_IDS["Q4_1"], 288, q8_activations=True, lib=_lib("native"))
    x = torch.randn(3, 288, generator=torch.Generator().manual_seed(10)).bfloat16()
    as_float = run(x.float())
    assert torch.equal(run(x), as_float)
    got = run(x, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, as_float.bfloat16())


def test_other_types_and_builds_without_avx2_take_the_float_path():
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(11))
    from test_cpu_gguf import make_blocks

    kq = torch.from_numpy(make_blocks("Q4_K", 8, 256))
    tid = cpu_gguf.TYPE_IDS["Q4_K"]
    assert torch.equal(cpu_gguf.matmul(x, kq, tid, 256, q8_activations=True), cpu_gguf.matmul(x, kq, tid, 256))
    plain = cpu_gguf.load(("-mno-avx",))
    assert plain is not None and not cpu_gguf.has_q8(plain)
    q4 = torch.from_numpy(_blocks("Q4_0", 8, 256, seed=12))
    tid = cpu_gguf.TYPE_IDS["Q4_0"]
    assert torch.equal(cpu_gguf.matmul(x, q4, tid, 256, lib=plain, q8_activations=True),
                       cpu_gguf.matmul(x, q4, tid, 256, lib=plain))
