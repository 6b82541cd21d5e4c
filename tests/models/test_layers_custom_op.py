"""``CustomOp`` binding (``models/layers/custom_op.py``): each norm, activation and rotary layer picks
its path once, at load, and a call then runs that path without deciding again.

That the C path equals the torch one is ``tests/kernels/test_cpu_layer_ops.py``'s job, and the
Triton one's ``tests/kernels/test_fused_ops.py``'s; here: what binding chooses, that the choice
holds whatever changes afterwards, and that the float32 weights are made once.
"""
import pytest
import torch

from pagedllm.kernels import cpu_build, cpu_ops
from pagedllm.models.layers import layernorm
from pagedllm.models.layers.activation import ActAndMul, SiluAndMul, get_act_fn
from pagedllm.models.layers.custom_op import CustomOp
from pagedllm.models.layers.layernorm import GemmaRMSNorm, LayerNorm, RMSNorm
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding

DTYPE = torch.bfloat16
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 128, generator=gen).to(DTYPE)
    res = torch.randn(6, 128, generator=gen).to(DTYPE)
    qk = torch.randn(6, 5, 32, generator=gen).to(DTYPE)
    return x, res, qk


@pytest.fixture(autouse=True)
def every_c_twin_binds(monkeypatch):
    """These tests are about binding itself: every layer with a C twin takes it, as on an AVX-512 CPU
    (elsewhere exact GELU and LayerNorm stay with torch: ``test_scalar_only_cpus_keep_gelu_and_layernorm_in_torch``)."""
    monkeypatch.setattr(cpu_ops, "vectorized", lambda: True)


def test_scalar_only_cpus_keep_gelu_and_layernorm_in_torch(monkeypatch):
    """Without AVX-512 the C exact GELU and LayerNorm are scalar loops slower than torch: they bind to torch,
    while RMSNorm and SiLU-and-mul, which still win there, keep their C twins."""
    monkeypatch.setattr(cpu_ops, "vectorized", lambda: False)
    assert get_act_fn("gelu").bind_forward("cpu", DTYPE) == "native"
    assert LayerNorm(128).to(DTYPE).bind_forward("cpu", DTYPE) == "native"
    assert RMSNorm(128).to(DTYPE).bind_forward("cpu", DTYPE) == "cpu"
    assert SiluAndMul().bind_forward("cpu", DTYPE) == "cpu"


def _layers():
    """(layer, bound method name, its inputs, the C function it reaches): every layer class with a C twin."""
    gen = torch.Generator().manual_seed(1)
    norm, gemma, ln, ln2 = RMSNorm(128), GemmaRMSNorm(128, 1e-6), LayerNorm(128), LayerNorm(128)
    for m in (norm, gemma, ln, ln2):
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=gen).to(DTYPE)
    rope = RotaryEmbedding(32, 16, 64, ROPE, is_neox_style=False)
    rope.to_dtype(DTYPE)
    x, res, qk = _inputs()
    pos = torch.tensor([0, 1, 2, 3, 40, 63])
    acts = [get_act_fn("silu"), get_act_fn("gelu_new"), get_act_fn("gelu"), SiluAndMul(), ActAndMul("gelu_pytorch_tanh")]
    return [(norm, "forward", lambda: ((x, res), {}), "rms_norm"),
            (gemma, "forward", lambda: ((x,), {}), "rms_norm"),
            (ln, "forward", lambda: ((x,), {}), "layer_norm"),
            (ln2, "forward", lambda: ((x,), {}), "layer_norm"),
            (ln, "add_and_norm", lambda: ((x, res, x), {"also": ln2}), "layer_norm"),
            *[(act, "forward", lambda: ((x,), {}), "act_and_mul") for act in acts],
            (rope, "forward", lambda: ((pos, *qk.clone().split([3, 2], dim=1)), {}), "rotary_embedding_")]


def _run(layer, method, inputs, path=""):
    args, kwargs = inputs()
    out = getattr(layer, method + path)(*args, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def _spy(monkeypatch):
    """Counts the calls of each C entry point (the real function still runs)."""
    counts = {}
    for name in ("rms_norm", "layer_norm", "act_and_mul", "rotary_embedding_"):
        real = getattr(cpu_ops, name)
        counts[name] = 0

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(cpu_ops, name, spy)
    return counts


def _disable_c(monkeypatch):
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    assert cpu_ops.load() is None


def test_a_layer_bound_to_c_keeps_calling_c_without_asking_again(monkeypatch):
    """Once bound, neither the library lookup nor the device/dtype checks run per call: with the
    library then disabled (and ``load`` made to fail) each call still reaches its C function once,
    and gives its torch code's result."""
    layers = _layers()
    for layer, method, _, _ in layers:
        assert layer.bind_forward("cpu", DTYPE) == "cpu"
        assert method in vars(layer)  # the bound method itself, not the class's dispatcher
    _disable_c(monkeypatch)
    monkeypatch.setattr(cpu_ops, "load", lambda *a: pytest.fail("a bound layer looked up the library"))
    counts = _spy(monkeypatch)
    for layer, method, inputs, c_fn in layers:
        before = counts[c_fn]
        got = _run(layer, method, inputs)
        assert counts[c_fn] == before + 1, (type(layer).__name__, method)
        for a, b in zip(got, _run(layer, method, inputs, "_native"), strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-2)
    assert sum(counts.values()) == len(layers)


def test_a_layer_bound_to_torch_stays_there_when_c_appears(monkeypatch):
    """The other way round: bound while the C library is unavailable, a layer runs the torch code
    even after the library is back."""
    _disable_c(monkeypatch)
    layers = _layers()
    assert {layer.bind_forward("cpu", DTYPE) for layer, _, _, _ in layers} == {"native"}
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.delenv("PAGEDLLM_CPU_KERNEL")
    assert cpu_ops.load() is not None
    counts = _spy(monkeypatch)
    for layer, method, inputs, _ in layers:
        _run(layer, method, inputs)
    assert counts == dict.fromkeys(counts, 0)


@pytest.mark.parametrize("layer_cls", [RMSNorm, GemmaRMSNorm, LayerNorm])
def test_float32_weights_are_made_once_at_bind_time(monkeypatch, layer_cls):
    """The C path reads float32 copies made when the layer is bound, not per call; changing the
    weights afterwards needs ``bind_forward`` again (the runner binds after loading)."""
    layer = layer_cls(128, 1e-5)
    layer.weight.data.normal_(generator=torch.Generator().manual_seed(2))
    layer.to(DTYPE)
    made = []
    real = layernorm.float32_copy
    monkeypatch.setattr(layernorm, "float32_copy", lambda t: (made.append(t), real(t))[1])
    assert layer.bind_forward("cpu", DTYPE) == "cpu"
    copies = dict(vars(layer))
    made_at_bind = len(made)
    x = _inputs()[0]
    first = layer(x)
    for _ in range(3):
        assert torch.equal(layer(x), first)
    assert len(made) == made_at_bind  # nothing remade by the calls
    f32 = {k: v for k, v in vars(layer).items() if k.endswith("_f32")}
    assert f32 and all(v is copies[k] for k, v in f32.items())  # the very same tensors
    with torch.no_grad():
        layer.weight.mul_(2)
    layer.bind_forward("cpu", DTYPE)
    torch.testing.assert_close(layer(x).float(), layer.forward_native(x).float(), rtol=2 ** -7, atol=1e-2)


def test_an_unbound_layer_binds_itself_at_its_first_call():
    norm = RMSNorm(128).to(DTYPE)
    assert norm.bound_to is None and "forward" not in vars(norm)
    norm(_inputs()[0])
    assert norm.bound_to == ("cpu" if cpu_ops.load() is not None else "native")
    assert vars(norm)["forward"].__func__ is getattr(RMSNorm, f"forward_{norm.bound_to}")


def test_binding_declines_c_where_it_would_compute_something_else():
    """fp32 weights with bf16 activations (torch promotes, C would not), rows past the C buffers,
    float16, an activation without a C twin, a non-CPU device: the torch code."""
    assert RMSNorm(128).bind_forward("cpu", torch.bfloat16) == "native"  # fp32 weight
    assert RMSNorm(cpu_ops.MAX_COLS + 1).bind_forward("cpu", torch.float32) == "native"
    assert LayerNorm((4, 8)).bind_forward("cpu", torch.float32) == "native"
    assert SiluAndMul().bind_forward("cpu", torch.float16) == "native"
    assert ActAndMul("relu").bind_forward("cpu", torch.float32) == "native"
    assert RMSNorm(128).bind_forward("meta", torch.float32) == "native"


def test_the_runner_binds_every_layer_at_load(tmp_path):
    from model_fixtures import make_tiny_model

    from pagedllm import LLM

    path = make_tiny_model(tmp_path / "llama", num_hidden_layers=1)
    llm = LLM(path, dtype="float32", kv_cache_memory=4 << 20)
    ops = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, CustomOp)]
    kinds = {type(m).__name__ for m in ops}
    assert kinds == {"RMSNorm", "RotaryEmbedding", "SiluAndMul", "Silu"}  # Silu: inside SiluAndMul
    want = "cpu" if cpu_ops.load() is not None else "native"
    assert all(m.bound_to == want and "forward" in vars(m) for m in ops)
