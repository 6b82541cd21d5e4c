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


# ---- the layers whose CUDA path these kernels are (``CustomOp.forward_cuda``, bound once at load) ----

def _spy_kernels(monkeypatch) -> dict:
    counts = dict.fromkeys(("rms_norm", "rotary", "silu_and_mul"), 0)
    for name in counts:
        real = getattr(fused_ops, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(fused_ops, name, spy)
    return counts


def _bound_for_cuda(layer):
    """Bound as on a GPU (here: its kernels interpreted on CPU tensors)."""
    assert layer.bind_forward("cuda") == "cuda"
    assert vars(layer)["forward"].__func__ is type(layer).forward_cuda
    return layer


def _assert_same(got, want, name):
    """float32 to a few ulps (summation order, 1/sqrt for rsqrt, exp); float16 to two ulps (an ulp
    that flips RMSNorm's rounding before the weight): the kernels round where the torch code rounds
    (SiLU-and-mul and rotary were 1-3% off in float16 before they did). bfloat16 only as a whole
    (relative norm < 1e-2): Triton's interpreter truncates to bfloat16 where torch rounds to nearest."""
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == torch.bfloat16:
            check(name, a, b, a.dtype)
        else:
            torch.testing.assert_close(a, b, rtol=2 ** -9 if a.dtype == torch.float16 else 1.3e-6, atol=1e-5)


LAYER_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LAYER_DTYPES)
def test_rms_norm_layer_bound_for_cuda_runs_this_kernel(dtype, monkeypatch):
    from pagedllm.models.layers.layernorm import RMSNorm

    norm = RMSNorm(576, 1e-5).to(DEVICE)
    norm.weight.data = _randn(576, dtype=dtype, seed=6).to(DEVICE)
    _bound_for_cuda(norm)
    x, res = (_randn(3, 4, 576, dtype=dtype, seed=s).to(DEVICE) * 3 for s in (7, 8))
    counts = _spy_kernels(monkeypatch)
    _assert_same(norm(x), norm.forward_native(x), "layer rms_norm")
    _assert_same(norm(x, res), norm.forward_native(x, res), "layer rms_norm+residual")
    assert counts == {"rms_norm": 2, "rotary": 0, "silu_and_mul": 0}


@pytest.mark.parametrize("dtype", LAYER_DTYPES)
@pytest.mark.parametrize("is_neox_style", [True, False])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (80, 32)])
def test_rotary_layer_bound_for_cuda_runs_this_kernel(head_dim, rotary_dim, is_neox_style, dtype, monkeypatch):
    """q and k as views of one fused q|k|v output (rows strided), full and partial rotary, both styles."""
    from pagedllm.models.layers.rotary_embedding import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, rotary_dim, 512, {"rope_type": "default", "rope_theta": 10000.0},
                           is_neox_style).to(DEVICE)
    rope.to_dtype(dtype)
    _bound_for_cuda(rope)
    T, H, Hkv = 7, 4, 2
    qkv = _randn(T, (H + 2 * Hkv) * head_dim, dtype=dtype, seed=head_dim).to(DEVICE)
    q = qkv[:, :H * head_dim].view(T, H, head_dim)
    k = qkv[:, H * head_dim:(H + Hkv) * head_dim].view(T, Hkv, head_dim)
    positions = torch.tensor([0, 1, 2, 17, 100, 511, 3]).to(DEVICE)
    counts = _spy_kernels(monkeypatch)
    _assert_same(rope(positions, q, k), rope.forward_native(positions, q, k), "layer rotary")
    assert counts == {"rms_norm": 0, "rotary": 1, "silu_and_mul": 0}


@pytest.mark.parametrize("dtype", LAYER_DTYPES)
def test_silu_and_mul_layer_bound_for_cuda_runs_this_kernel(dtype, monkeypatch):
    from pagedllm.models.layers.activation import ActAndMul, SiluAndMul

    x = _randn(3, 4, 2 * 1000, dtype=dtype, seed=9).to(DEVICE) * 4
    counts = _spy_kernels(monkeypatch)
    for act in (SiluAndMul(), ActAndMul("swish")):
        _bound_for_cuda(act)
        _assert_same(act(x), act.forward_native(x), "layer silu_and_mul")
    assert counts == {"rms_norm": 0, "rotary": 0, "silu_and_mul": 2}


def test_layers_without_a_matching_kernel_bind_to_torch_on_cuda(monkeypatch):
    """Gemma's norm (weight applied before rounding), LayerNorm, activations other than gated SiLU,
    an fp32-weight RMSNorm under bf16 activations (torch promotes, the kernel would not), and any
    layer when triton is missing: their torch code."""
    from pagedllm.models.layers import custom_op
    from pagedllm.models.layers.activation import ActAndMul, SiluAndMul, get_act_fn
    from pagedllm.models.layers.layernorm import GemmaRMSNorm, LayerNorm, RMSNorm

    for layer in (GemmaRMSNorm(64, 1e-6), LayerNorm(64), ActAndMul("gelu_pytorch_tanh"), get_act_fn("silu")):
        assert layer.bind_forward("cuda", torch.float32) == "native"
    assert RMSNorm(64).bind_forward("cuda", torch.bfloat16) == "native"
    assert RMSNorm(64).to(torch.float16).bind_forward("cuda", torch.float16) == "cuda"
    monkeypatch.setattr(custom_op, "triton_ops", lambda: None)
    assert SiluAndMul().bind_forward("cuda", torch.float32) == "native"
