"""The fp8 KV cache (``kv_cache_dtype="fp8"``): its format, every store path and every kernel reading it.

Oracles: e4m3fn's value table written out from the spec (sign, 4-bit exponent of bias 7, 3-bit
mantissa, exponent 0 subnormal) for the torch twin's codes; the torch twin (``kv_fp8.quantize``)
for the C and Triton stores, byte for byte; and for the attention kernels the float64 reference
computed from the same quantized cache, dequantized in float64 (so the test measures the
kernels' arithmetic, not the quantization error, which ``test_round_trip_error`` bounds).
"""
import pytest
import torch
from paged_cases import DEVICE, check, make_case

from pagedllm.kernels import cpu_decode, kv_fp8, reference
from pagedllm.kernels.decode_attention import paged_decode_attention
from pagedllm.kernels.prefill_attention import paged_prefill_attention
from pagedllm.kernels.store_kv import store_kv as triton_store_kv


def _e4m3_spec(code: int) -> float:
    sign = -1.0 if code & 0x80 else 1.0
    exp, man = (code >> 3) & 0xF, code & 7
    if exp == 0:
        return sign * 2.0 ** -6 * man / 8
    return sign * 2.0 ** (exp - 7) * (1 + man / 8)


def test_codes_decode_as_the_spec_says():
    codes = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)  # 0x7F/0xFF: NaN
    packed = torch.cat([codes.view(-1, 1), torch.tensor([[0x80, 0x3F]], dtype=torch.uint8).expand(len(codes), 2)],
                       1)  # scale bytes 0x3F80: bf16 1.0
    got = kv_fp8.dequantize(packed, torch.float64).view(-1)
    want = torch.tensor([_e4m3_spec(int(c)) for c in codes], dtype=torch.float64)
    assert torch.equal(got, want)


def test_round_trip_error():
    """A row comes back within half an e4m3 step of its scale-relative value: |err| <= amax * 2^-4
    (3 mantissa bits), and 0 stays 0; the scale is a bf16 value >= amax / 448, so nothing saturates."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 64, generator=g) * torch.logspace(-4, 3, 64).view(64, 1, 1)
    x[3] = 0
    packed = kv_fp8.quantize(x)
    assert packed.dtype == torch.uint8 and packed.shape == (64, 4, 66)
    codes, scales = kv_fp8.codes_and_scales(packed)
    amax = x.abs().amax(-1)
    assert (scales * 448 >= amax).all() and torch.equal(scales.to(torch.bfloat16).float(), scales)
    err = (kv_fp8.dequantize(packed, torch.float64) - x.double()).abs()
    assert (err <= amax.double().unsqueeze(-1) * 2.0 ** -4 + 1e-30).all()
    assert (kv_fp8.dequantize(packed[3]) == 0).all()


def _store_inputs(dtype, T=21, kvh=3, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(T, 4 * kvh * d, generator=g) * torch.logspace(-3, 2, T).view(T, 1)  # wide ranges
    qkv = qkv.to(dtype)
    k = qkv[:, 2 * kvh * d:3 * kvh * d].view(T, kvh, d)  # strided views, as a fused QKV makes them
    v = qkv[:, 3 * kvh * d:].view(T, kvh, d)
    slots = torch.randperm(6 * 16, generator=g)[:T]
    slots[[0, 5, 20]] = -1
    return k, v, slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("store", ["c", "c-no-avx512", "triton"])
def test_stores_write_the_torch_twins_bytes(store, dtype):
    k, v, slots = _store_inputs(dtype)
    shape = (6, 16, 3, 66)
    kc_ref, vc_ref = torch.zeros(shape, dtype=torch.uint8), torch.zeros(shape, dtype=torch.uint8)
    reference.store_kv(k, v, kc_ref, vc_ref, slots)
    keep = slots >= 0
    assert torch.equal(kc_ref.view(-1, 3, 66)[slots[keep]], kv_fp8.quantize(k[keep]))
    kc, vc = torch.zeros(shape, dtype=torch.uint8), torch.zeros(shape, dtype=torch.uint8)
    if store == "triton":
        kc, vc = kc.to(DEVICE), vc.to(DEVICE)
        triton_store_kv(k.to(DEVICE), v.to(DEVICE), kc, vc, slots.to(DEVICE))
    else:
        lib = cpu_decode.load(() if store == "c" else ("-mno-avx512f",))
        assert lib is not None, "the CPU kernel must build on the test machine"
        assert cpu_decode.store_kv(lib, k, v, kc, vc, slots)
    assert torch.equal(kc.cpu(), kc_ref) and torch.equal(vc.cpu(), vc_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("build", ["c", "c-no-avx512"])
def test_c_store_rounds_ties_to_even_as_the_spec(build, dtype):
    """Rows of exact midpoints between neighbouring e4m3 values (subnormal and normal, both signs), with 448 in
    each row so the scale is exactly 1: every value is a tie, which round-to-nearest-even decides; the codes
    must be the spec's even neighbour (and the torch twin's), in the vector loop (head_dim 64) and the scalar
    one (head_dim 80)."""
    values = sorted({_e4m3_spec(c) for c in range(0x7F)})  # 0 .. 448
    ties = [(lo + hi) / 2 for lo, hi in zip(values, values[1:])]
    for d in (64, 80):
        rows = []
        for start in range(0, len(ties), d - 1):
            chunk = ties[start:start + d - 1]
            chunk += [chunk[0]] * (d - 1 - len(chunk))
            rows.append([448.0] + [t if i % 2 else -t for i, t in enumerate(chunk)])
        x = torch.tensor(rows, dtype=torch.float64).to(dtype)
        assert torch.equal(x.double(), torch.tensor(rows, dtype=torch.float64))  # the ties are exact in dtype
        k = x.view(len(rows), 1, d)
        kc = torch.zeros(len(rows), 1, 1, d + 2, dtype=torch.uint8)
        vc = torch.zeros_like(kc)
        lib = cpu_decode.load(() if build == "c" else ("-mno-avx512f",))
        assert cpu_decode.store_kv(lib, k, k, kc, vc, torch.arange(len(rows)))
        codes, scales = kv_fp8.codes_and_scales(kc.view(len(rows), 1, d + 2))
        assert (scales == 1).all()
        spec = torch.tensor([[_even_neighbour(v, values) for v in row] for row in rows], dtype=torch.uint8)
        assert torch.equal(codes.view(torch.uint8).view(len(rows), d), spec)
        assert torch.equal(kc.view(len(rows), 1, d + 2), kv_fp8.quantize(k))


def _even_neighbour(value: float, values: list) -> int:
    """The e4m3 code of ``value`` rounded to nearest, ties to the even code (value within [-448, 448])."""
    magnitude = abs(value)
    best = min(range(len(values)), key=lambda i: (abs(values[i] - magnitude), i % 2))
    return best | (0x80 if value < 0 else 0)


def _fp8_case(seqs, block_size, kvh, group, head_dim, dtype, seed):
    """A paged case whose caches are quantized (NaN rows poison every unused slot), and its float64 view."""
    case = make_case(seqs, block_size, kvh, group, head_dim, dtype, seed=seed, device="cpu")
    case.k_cache, case.v_cache = kv_fp8.quantize(case.k_cache), kv_fp8.quantize(case.v_cache)
    return case, kv_fp8.dequantize(case.k_cache, torch.float64), kv_fp8.dequantize(case.v_cache, torch.float64)


# (heads per KV head, KV heads, head_dim, block size): GQA, MHA, MQA, a head_dim that is not a multiple of 16
SHAPES = [(3, 3, 64, 16), (1, 4, 128, 32), (8, 1, 64, 16), (2, 2, 80, 8)]
LENS = [1, 2, 15, 16, 17, 63, 100, 333]


# native: bf16 through vdpbf16ps where the CPU has AVX512-BF16; then AVX-512 float32 loops; then plain C
VARIANTS = {"native": (), "no-avx512-bf16": ("-mno-avx512bf16",), "no-avx512": ("-mno-avx512f",)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "g{}kv{}d{}bs{}".format(*s))
def test_cpu_decode_reads_fp8(variant, dtype, shape):
    group, kvh, head_dim, bs = shape
    case, k64, v64 = _fp8_case([(n, 1) for n in LENS], bs, kvh, group, head_dim, dtype, seed=head_dim + bs)
    lib = cpu_decode.load(VARIANTS[variant])
    assert lib is not None and cpu_decode.supports(case.q, case.k_cache)
    scale = head_dim ** -0.5
    out = cpu_decode.paged_decode(lib, case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens,
                                  max(LENS), scale)
    ref = reference.paged_decode_attention(case.q.double(), k64, v64, case.block_tables, case.context_lens, scale)
    check("cpu_decode_fp8", out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_decode_fp8_window_and_soft_cap(dtype):
    case, k64, v64 = _fp8_case([(n, 1) for n in LENS], 16, 2, 4, 64, dtype, seed=9)
    lib = cpu_decode.load()
    out = cpu_decode.paged_decode(lib, case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens,
                                  max(LENS), 0.125, 37, 5.0)
    ref = reference.paged_decode_attention(case.q.double(), k64, v64, case.block_tables, case.context_lens, 0.125,
                                           37, 5.0)
    check("cpu_decode_fp8", out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 3, 64, 16), (8, 1, 64, 32), (1, 2, 128, 16)],
                         ids=lambda s: "g{}kv{}d{}bs{}".format(*s))
def test_triton_decode_reads_fp8(dtype, shape):
    group, kvh, head_dim, bs = shape
    case, k64, v64 = _fp8_case([(n, 1) for n in (1, 17, 63, 300)], bs, kvh, group, head_dim, dtype, seed=1)
    to = lambda x: x.to(DEVICE)  # noqa: E731
    scale = head_dim ** -0.5
    out = paged_decode_attention(to(case.q), to(case.k_cache), to(case.v_cache), to(case.block_tables),
                                 to(case.context_lens), scale, num_splits=2)
    ref = reference.paged_decode_attention(case.q.double(), k64, v64, case.block_tables, case.context_lens, scale)
    check("decode_attention_fp8", out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_prefill_reads_fp8(dtype):
    """Fresh prompts, chunked prefill over a cached prefix (what a prefix-cache hit reads), GQA."""
    case, k64, v64 = _fp8_case([(1, 1), (17, 17), (70, 23), (130, 3)], 16, 2, 3, 64, dtype, seed=2)
    to = lambda x: x.to(DEVICE)  # noqa: E731
    out = paged_prefill_attention(to(case.q), to(case.k_cache), to(case.v_cache), to(case.block_tables),
                                  to(case.query_start_loc), to(case.context_lens), 0.125)
    ref = reference.paged_prefill_attention(case.q.double(), k64, v64, case.block_tables, case.query_start_loc,
                                            case.context_lens, 0.125)
    check("prefill_attention_fp8", out, ref, dtype)
