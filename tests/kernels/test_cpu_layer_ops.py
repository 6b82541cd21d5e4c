"""The C RMSNorm, LayerNorm, MLP activations and rotary embedding (``kernels/cpu_ops``) against float64 references.

Both compiled variants run: the machine's best (AVX-512 where the CPU has it) and a build
without AVX-512 (plain C). float32 results must match the float64 formula to float32 precision;
bf16 results to one rounding, with the residual sum bit-identical to torch's bf16 add (the
unfused model's rounding), and in the engine's layers the C path must agree with the torch one.
The rotary embedding rounds where the unfused torch ops round, so it must equal them bit for bit.
"""
import math

import pytest
import torch

from pagedllm.kernels import cpu_build, cpu_ops

VARIANTS = {"native": (), "no-avx512": ("-mno-avx512f",)}
DTYPES = [torch.float32, torch.bfloat16]
REL = {torch.float32: 2e-6, torch.bfloat16: 2 ** -7}  # bf16: one rounding of each of two steps
COLS = [576, 100, 1]  # a multiple of 16, a tail, a single column


def _lib(variant):
    lib = cpu_ops.load(VARIANTS[variant])
    assert lib is not None, "the C ops must build on the test machine (gcc is part of the image)"
    return lib


def _close(got, want64, dtype, atol=1e-6, rel=None):
    err = (got.double() - want64).abs()
    bound = (REL[dtype] if rel is None else rel) * want64.abs() + atol
    assert bool((err <= bound).all()), f"max err {err.max().item():.3g} (worst excess {(err - bound).max().item():.3g})"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_float64(variant, dtype, cols, with_residual):
    gen = torch.Generator().manual_seed(cols)
    x = (torch.randn(7, cols, generator=gen) * 3).to(dtype)
    residual = torch.randn(7, cols, generator=gen).to(dtype) if with_residual else None
    weight = torch.randn(cols, generator=gen).to(dtype)
    got = cpu_ops.rms_norm(x, weight.float(), 1e-5, residual, lib=_lib(variant))
    if with_residual:
        got, summed = got
        assert torch.equal(summed, x + residual)  # rounded exactly as the unfused model's add
        x = summed
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()
    assert got.dtype == dtype and got.shape == x.shape
    _close(got, want, dtype, atol=1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemma_norm_multiplies_before_rounding(variant, dtype):
    """Gemma's (1 + weight) in float32, one rounding at the end: equal to the torch formula."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 640, generator=gen) * 2).to(dtype)
    scale = 1.0 + torch.randn(640, generator=gen).to(dtype).float()
    got = cpu_ops.rms_norm(x, scale, 1e-6, round_before_weight=False, lib=_lib(variant))
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * scale.double()
    _close(got, want, dtype, atol=1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_layer_norm_matches_float64(variant, dtype, cols, affine):
    gen = torch.Generator().manual_seed(cols + len(affine))
    x = (torch.randn(7, 2 * cols, generator=gen) * 3 + 1.5).to(dtype)[:, ::2]  # strided rows and columns
    weight = torch.randn(cols, generator=gen).to(dtype) if affine != "none" else None
    bias = torch.randn(cols, generator=gen).to(dtype) if affine == "weight+bias" else None
    got = cpu_ops.layer_norm(x, None if weight is None else weight.float(), None if bias is None else bias.float(),
                             1e-5, lib=_lib(variant))
    x64 = x.double()
    want = (x64 - x64.mean(-1, keepdim=True)) / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    if weight is not None:
        want = want * weight.double()
    if bias is not None:
        want = want + bias.double()
    assert got.dtype == dtype and got.shape == x.shape
    _close(got, want, dtype, atol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_addends, paired", [(1, False), (2, False), (0, True), (2, True)])
def test_layer_norm_of_a_residual_sum_and_a_second_norm(variant, dtype, num_addends, paired):
    """The sum is torch's left-to-right adds bit for bit (each add rounded to the dtype), and each
    norm (the second with its own weight and bias) is of that sum; the parts may be strided views."""
    gen = torch.Generator().manual_seed(num_addends)
    cols = 100
    x = (torch.randn(6, cols, generator=gen) * 3).to(dtype)
    parts = [(torch.randn(6, 2 * cols, generator=gen) * 2).to(dtype)[:, :cols] for _ in range(num_addends)]
    weight, bias = torch.randn(cols, generator=gen), torch.randn(cols, generator=gen)
    second = (torch.randn(cols, generator=gen), None) if paired else None
    got = cpu_ops.layer_norm(x, weight, bias, 1e-5, *parts, second=second, lib=_lib(variant))
    want_sum = x
    for p in parts:
        want_sum = want_sum + p
    if num_addends:
        assert torch.equal(got[-1], want_sum)
    s64 = want_sum.double()
    normed = (s64 - s64.mean(-1, keepdim=True)) / torch.sqrt(s64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    tol = dict(dtype=dtype, atol=1e-5 if dtype == torch.float32 else 2e-2)
    _close(got[0], normed * weight.double() + bias.double(), **tol)
    if paired:
        _close(got[1], normed * second[0].double(), **tol)


def _silu(x):
    return x / (1 + torch.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


ACTS = {"silu": _silu, "gelu_tanh": _gelu_tanh, "gelu": _gelu}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_gelu_far_tails_match_float64(variant, dtype):
    """Past |x| ~ 13 exact GELU of a negative x leaves float's normal range and the AVX-512 path
    returns 0 there (it skips erfc's subnormal values); on both sides of that cut, and for large
    positive x (exactly x), the results are float64's erfc form within float's smallest normal."""
    tails = torch.cat([torch.linspace(8, 30, 400), torch.tensor([13.0, 13.1, 13.15, 13.152, 13.153, 13.2, 13.3])])
    x = torch.cat([-tails, tails]).to(dtype).reshape(2, -1)
    got = cpu_ops.act_and_mul(x, "gelu", False, lib=_lib(variant))
    x64 = x.double()
    want = 0.5 * x64 * torch.special.erfc(-x64 / math.sqrt(2))  # no 1 + erf cancellation in the oracle
    # erfc(a) out here moves by a factor 2 a^2 of a relative change in a: float32's rounding of x
    # alone gives ~1e-5 at |x| = 13 (libm's erfcf as much as the AVX-512 path)
    _close(got, want, dtype, atol=torch.finfo(torch.float32).tiny, rel=max(REL[dtype], 2e-5))
    big = x64 > 13.2
    assert torch.equal(got.double()[big], x64[big])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("gated", [True, False])
def test_activations_match_float64(variant, dtype, act, gated):
    gen = torch.Generator().manual_seed(2)
    d = 1000  # 62 vectors of 16 and a tail
    # a strided input: every other row of a wider buffer, values spanning both tails of the curve
    base = (torch.randn(12, 2 * d + 8, generator=gen) * 4).to(dtype)
    x = base[::2, : 2 * d if gated else d]
    got = cpu_ops.act_and_mul(x, act, gated, lib=_lib(variant))
    x64 = x.double()
    fn = ACTS[act]
    if gated:
        # the unfused model rounds the activation to the dtype before the product
        want = fn(x64[:, :d]).to(dtype).double() * x64[:, d:]
    else:
        want = fn(x64)
    assert got.shape == (6, d) and got.dtype == dtype
    _close(got, want, dtype, atol=1e-6 if dtype == torch.float32 else 1e-3)


def test_bad_activation_name_is_refused():
    with pytest.raises(ValueError, match="act must be one of \\['gelu', 'gelu_tanh', 'silu'\\]"):
        cpu_ops.act_and_mul(torch.zeros(2, 4), "relu")


def test_inputs_the_c_code_cannot_take_return_none():
    lib = _lib("native")
    assert cpu_ops.act_and_mul(torch.zeros(2, 5), "silu", gated=True, lib=lib) is None  # odd gated width
    assert cpu_ops.act_and_mul(torch.zeros(2, 4, dtype=torch.float16), "silu", lib=lib) is None
    assert cpu_ops.rms_norm(torch.zeros(2, 4), torch.ones(4, dtype=torch.bfloat16), 1e-6, lib=lib) is None
    assert cpu_ops.rms_norm(torch.zeros(2, 20000), torch.ones(20000), 1e-6, lib=lib) is None  # wider than its buffers
    assert cpu_ops.layer_norm(torch.zeros(2, 4), torch.ones(4, dtype=torch.bfloat16), None, 1e-5, lib=lib) is None
    assert cpu_ops.layer_norm(torch.zeros(2, 4), torch.ones(5), None, 1e-5, lib=lib) is None
    assert cpu_ops.layer_norm(torch.zeros(2, 4), None, None, 1e-5, torch.zeros(2, 5), lib=lib) is None  # other shape
    assert cpu_ops.layer_norm(torch.zeros(2, 4), None, None, 1e-5, torch.zeros(2, 4, dtype=torch.bfloat16), lib=lib) is None
    assert cpu_ops.layer_norm(torch.zeros(2, 4), None, None, 1e-5, *[torch.zeros(2, 4)] * 3, lib=lib) is None


def test_layers_agree_with_their_torch_path_and_fall_back_when_disabled(monkeypatch):
    """RMSNorm (with residual), Gemma's norm, LayerNorm and the activations: the C path against the same
    modules bound again with the C library disabled (their torch code), in bf16. Every C twin binds here,
    also those a CPU without AVX-512 leaves to torch (``cpu_ops.vectorized``): their scalar loops are checked too."""
    monkeypatch.setattr(cpu_ops, "vectorized", lambda: True)
    from pagedllm.models.layers.activation import ActAndMul, SiluAndMul, get_act_fn
    from pagedllm.models.layers.layernorm import GemmaRMSNorm, LayerNorm, RMSNorm

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 256, generator=gen).to(torch.bfloat16)
    res = torch.randn(9, 256, generator=gen).to(torch.bfloat16)
    norm, gemma_norm = RMSNorm(256).to(torch.bfloat16), GemmaRMSNorm(256, 1e-6).to(torch.bfloat16)
    layer_norm, plain_norm = LayerNorm(256).to(torch.bfloat16), LayerNorm(256, elementwise_affine=False)
    layer_norm2 = LayerNorm(256).to(torch.bfloat16)
    for p in (norm.weight, gemma_norm.weight, layer_norm.weight, layer_norm.bias, layer_norm2.weight, layer_norm2.bias):
        p.data.normal_(generator=gen)
    modules = [lambda: norm(x, res), lambda: gemma_norm(x), lambda: layer_norm(x), lambda: plain_norm(x),
               lambda: layer_norm.add_and_norm(x, res), lambda: layer_norm.add_and_norm(x, res, x),
               lambda: layer_norm.add_and_norm(x), lambda: layer_norm.add_and_norm(x, res, x, also=layer_norm2),
               lambda: layer_norm.add_and_norm(x, also=layer_norm2),
               lambda: SiluAndMul()(x),
               lambda: ActAndMul("gelu_pytorch_tanh")(x), lambda: get_act_fn("gelu")(x),
               lambda: get_act_fn("gelu_new")(x)]
    fused = [m() for m in modules]
    kept = (norm, gemma_norm, layer_norm, plain_norm, layer_norm2)  # bound at their first call
    assert [m.bound_to for m in kept] == ["cpu"] * 5
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    assert cpu_ops.load() is None
    assert [m.bind_forward("cpu") for m in kept] == ["native"] * 5
    unfused = [m() for m in modules]
    for a, b in zip(fused, unfused):
        for ta, tb in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert ta.dtype == tb.dtype and ta.shape == tb.shape
            torch.testing.assert_close(ta.float(), tb.float(), rtol=2 ** -7, atol=1e-2)


ROTARY_SHAPES = [(64, 64), (64, 16), (80, 40)]  # (head_dim, rotary_dim): full, partial with a tail, odd pairs


def _rope(head_dim, rotary_dim, neox, dtype):
    from pagedllm.models.layers.rotary_embedding import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, rotary_dim, 512, {"rope_type": "default", "rope_theta": 10000.0}, neox)
    rope.to_dtype(dtype)
    return rope


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("head_dim,rotary_dim", ROTARY_SHAPES)
def test_rotary_equals_the_torch_ops_and_float64(variant, dtype, neox, head_dim, rotary_dim):
    """q heads of a fused q|k|v row (strided rows), rotated in place: bit-identical to the torch
    ops; within one rounding of the float64 rotation by the same tables; v and the untouched dims kept."""
    rope = _rope(head_dim, rotary_dim, neox, dtype)
    gen = torch.Generator().manual_seed(head_dim + rotary_dim + neox)
    T, heads = 6, 5
    qkv = (torch.randn(T, 3 * heads * head_dim, generator=gen) * 2).to(dtype)
    positions = torch.tensor([0, 511, 7, 7, 300, 1])
    q = qkv[:, :heads * head_dim].view(T, heads, head_dim)
    before = qkv.clone()
    cos, sin = rope.cos_cache[positions].unsqueeze(1), rope.sin_cache[positions].unsqueeze(1)
    want = rope._turn(q.clone(), cos, sin)
    got = cpu_ops.rotary_embedding_(q, positions, rope.cos_cache, rope.sin_cache, neox, lib=_lib(variant))
    assert got is q
    assert torch.equal(got, want)
    assert torch.equal(qkv[:, heads * head_dim:], before[:, heads * head_dim:])
    assert torch.equal(got[..., rotary_dim:], before[:, :heads * head_dim].view(T, heads, head_dim)[..., rotary_dim:])
    x = before[:, :heads * head_dim].view(T, heads, head_dim)[..., :rotary_dim].double()
    x1, x2 = (x[..., ::2], x[..., 1::2]) if not neox else x.chunk(2, dim=-1)
    c, s = cos.double(), sin.double()
    o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
    want64 = torch.cat((o1, o2), -1) if neox else torch.stack((o1, o2), -1).flatten(-2)
    # three roundings (two products, the sum) of terms up to |x|: relative to |x1| + |x2|
    scale = (x1.abs() + x2.abs()).repeat(1, 1, 2) if neox else (x1.abs() + x2.abs()).repeat_interleave(2, -1)
    err = (got[..., :rotary_dim].double() - want64).abs()
    assert bool((err <= 3 * (2e-7 if dtype == torch.float32 else 2 ** -8) * scale + 1e-30).all())


def test_rotary_out_of_table_positions_are_left_to_the_torch_path():
    rope = _rope(64, 64, True, torch.float32)
    q = torch.randn(2, 3, 64)
    for bad in ([0, 512], [-1, 0]):
        assert cpu_ops.rotary_embedding_(q, torch.tensor(bad), rope.cos_cache, rope.sin_cache, True) is None
    with pytest.raises(IndexError):
        rope(torch.tensor([0, 512]), q, q.clone())
    assert cpu_ops.rotary_embedding_(q, torch.tensor([0, 1], dtype=torch.int32), rope.cos_cache,
                                     rope.sin_cache, True) is None  # positions must be int64


def test_rotary_module_rotates_in_place_on_cpu_and_equals_its_torch_path(monkeypatch):
    rope = _rope(64, 16, False, torch.bfloat16)
    q, k = torch.randn(4, 9, 64).to(torch.bfloat16), torch.randn(4, 3, 64).to(torch.bfloat16)
    positions = torch.tensor([3, 4, 5, 100])
    q0, k0 = q.clone(), k.clone()
    rq, rk = rope(positions, q, k)
    assert rope.bound_to == "cpu" and rq is q and rk is k and not torch.equal(q, q0)
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    assert rope.bind_forward("cpu") == "native"
    tq, tk = rope(positions, q0, k0)
    assert torch.equal(tq, rq) and torch.equal(tk, rk)


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "torch"])
def test_rotary_turns_adjacent_q_and_k_in_one_pass(monkeypatch, use_c):
    """q and k views of one fused q|k|v output go through one rotation call; the results equal
    rotating q and k separately, and v is untouched. Views that are not side by side (k not right
    after q, or rows that would overlap) are rotated separately."""
    from pagedllm.models.layers import rotary_embedding

    if not use_c:
        monkeypatch.setattr(cpu_build, "_LIBS", {})
        monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    rope = _rope(64, 16, True, torch.bfloat16)
    assert rope.bind_forward("cpu") == ("cpu" if use_c else "native")
    T, nq, nk, D = 5, 9, 3, 64
    qkv = torch.randn(T, (nq + 2 * nk) * D).to(torch.bfloat16)
    positions = torch.tensor([0, 9, 9, 200, 511])
    before = qkv.clone()
    name = "_rotate_cpu" if use_c else "_rotate_native"  # the bound path's rotation of one tensor
    rotate = getattr(rope, name)
    # the oracle is always the torch rotation (the C one equals it bit for bit, see above)
    want_q = rope._rotate_native(positions, before[:, :nq * D].reshape(T, nq, D).clone())
    want_k = rope._rotate_native(positions, before[:, nq * D:(nq + nk) * D].reshape(T, nk, D).clone())
    calls = []
    monkeypatch.setattr(rope, name, lambda pos, x: (calls.append(tuple(x.shape)), rotate(pos, x))[1])
    q, k = qkv[:, :nq * D].view(T, nq, D), qkv[:, nq * D:(nq + nk) * D].view(T, nk, D)
    rq, rk = rope(positions, q, k)
    assert calls == [(T, nq + nk, D)]
    assert torch.equal(rq, want_q) and torch.equal(rk, want_k)
    assert torch.equal(qkv[:, (nq + nk) * D:], before[:, (nq + nk) * D:])

    side_by_side = rotary_embedding._side_by_side
    assert side_by_side(q, qkv[:, (nq + nk) * D:].view(T, nk, D)) is None  # v: not right after q
    packed = torch.randn(T, (nq + nk) * D).to(torch.bfloat16)
    overlapping = packed.as_strided((T, nq, D), (nq * D, D, 1)), packed[:, nq * D:].reshape(T, nk, D)
    assert side_by_side(*overlapping) is None  # k's rows are contiguous copies: other strides
    rows_too_close = packed.as_strided((T, nq, D), (nq * D, D, 1)), packed.as_strided((T, nk, D), (nq * D, D, 1), nq * D)
    assert side_by_side(*rows_too_close) is None  # one view over both would overlap the next row
    assert side_by_side(q[:1], k[:1]) is not None
