"""oneDNN-packed bf16 weights on CPU (``kernels/cpu_gemm``): against a float64 product, against
F.linear (at most one bf16 step apart), and the layers that pack themselves after loading."""
import pytest
import torch
import torch.nn.functional as F

from pagedllm.kernels import cpu_gemm

pytestmark = pytest.mark.skipif(not cpu_gemm.available(), reason="this torch/CPU has no oneDNN bf16 packing")

ROWS = [1, 7, 32, 100, 2048]  # decode batches and prefill chunks (the packing is tuned for 32)


def _bf16_step(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 values around |x| (one unit in the last place)."""
    exponent = torch.floor(torch.log2(x.abs().clamp_min(2 ** -126)))
    return torch.pow(2.0, exponent - 7)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("in_features,out_features,bias", [(576, 1728, True), (1920, 576, True), (576, 1000, False)])
def test_packed_linear_matches_float64_and_f_linear(rows, in_features, out_features, bias):
    gen = torch.Generator().manual_seed(rows + in_features)
    w = (torch.randn(out_features, in_features, generator=gen) * 0.05).bfloat16()
    b = torch.randn(out_features, generator=gen).bfloat16() if bias else None
    x = torch.randn(rows, in_features, generator=gen).bfloat16()
    got = cpu_gemm.linear(x, cpu_gemm.pack(w), b)
    want = F.linear(x, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    exact = x.double() @ w.double().T + (b.double() if bias else 0)
    # one rounding to bf16 of a float32 sum: half a step, plus float32 accumulation error
    assert bool(((got.double() - exact).abs() <= 0.5 * _bf16_step(exact) + 1e-4).all())
    assert bool(((got.double() - want.double()).abs() <= _bf16_step(want.double()) + 1e-6).all())


def test_packed_linear_takes_leading_dims_and_strided_rows():
    w = torch.randn(64, 48).bfloat16()
    x = torch.randn(3, 5, 96).bfloat16()[..., ::2]
    packed = cpu_gemm.pack(w)
    assert torch.equal(cpu_gemm.linear(x, packed, None), cpu_gemm.linear(x.contiguous(), packed, None))
    assert cpu_gemm.linear(x, packed, None).shape == (3, 5, 64)
    want = F.linear(x, w).double()  # the oracle: within one bf16 step of torch's own product
    assert bool(((cpu_gemm.linear(x, packed, None).double() - want).abs() <= _bf16_step(want) + 1e-6).all())


def test_layers_pack_bf16_weights_drop_the_plain_copy_and_leave_float32_alone(monkeypatch):
    from pagedllm.models.layers.linear import QKVParallelLinear, RowParallelLinear
    from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding

    torch.manual_seed(0)
    row = RowParallelLinear(96, 32, bias=True).to(torch.bfloat16)
    qkv = QKVParallelLinear(32, 8, 4, 2).to(torch.bfloat16)
    embed, head = VocabParallelEmbedding(50, 32).to(torch.bfloat16), ParallelLMHead(50, 32).to(torch.bfloat16)
    for p in (row.weight, row.bias, qkv.weight, embed.weight):
        p.data.normal_()
    head.weight = embed.weight  # tied
    x96, x32 = torch.randn(4, 96).bfloat16(), torch.randn(4, 32).bfloat16()
    before = [row(x96), qkv(x32), head.compute_logits(x32)]
    plain_embedding = embed.weight.clone()
    for layer in (row, qkv, head):
        layer.prepack_for_cpu()
        assert layer.packed_weight is not None and layer.weight.numel() == 0
    after = [row(x96), qkv(x32), head.compute_logits(x32)]
    for a, b in zip(before, after):
        assert bool(((a.double() - b.double()).abs() <= _bf16_step(a.double()) + 1e-6).all())
    assert torch.equal(embed.weight, plain_embedding)  # the tied embedding keeps its weight

    fp32 = RowParallelLinear(8, 8)
    fp32.prepack_for_cpu()
    assert fp32.packed_weight is None and fp32.weight.shape == (8, 8)
    monkeypatch.setenv("PAGEDLLM_CPU_PREPACK", "0")
    off = RowParallelLinear(8, 8).to(torch.bfloat16)
    off.prepack_for_cpu()
    assert off.packed_weight is None and off.weight.shape == (8, 8)


def _moe_float64(moe, w13, w2, x, router_logits):
    """transformers' Mixtral block in float64: softmax, top-k, renormalise, sum of weighted experts."""
    probs = torch.softmax(router_logits.double(), -1)
    weights, experts = torch.topk(probs, moe.top_k, -1)
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], experts[t]):
            gate, up = (x[t].double() @ w13[e].double().T).chunk(2)
            out[t] += w * ((gate * torch.sigmoid(gate) * up) @ w2[e].double().T)
    return out


@pytest.mark.parametrize("tokens", [1, 9, 64, 300])
def test_moe_dense_path_and_sparse_path_match_float64(tokens):
    from pagedllm.models.layers import fused_moe

    torch.manual_seed(tokens)
    moe = fused_moe.FusedMoE(num_experts=4, top_k=2, hidden_size=32, intermediate_size=24).to(torch.bfloat16)
    moe.w13_weight.data.normal_(std=0.2)
    moe.w2_weight.data.normal_(std=0.2)
    w13, w2 = moe.w13_weight.detach().clone(), moe.w2_weight.detach().clone()
    x, router = torch.randn(tokens, 32).bfloat16(), torch.randn(tokens, 4)
    sparse = moe(x, router)
    moe.prepack_for_cpu()  # 4 x 24 <= 4 x 32: small experts, dense from now on
    assert moe.dense is not None and moe.w13_weight.numel() == moe.w2_weight.numel() == 0
    dense = moe(x, router)
    want = _moe_float64(moe, w13, w2, x, router)
    scale = float(want.abs().mean())
    for out in (sparse, dense):  # bf16 roundings of inputs, weights and each step: a few 2^-8 of |want|
        err = (out.double() - want).abs()
        assert float(err.max()) <= 0.12 * scale and float(err.mean()) <= 0.008 * scale, (err.max(), err.mean(), scale)


def test_moe_with_wide_experts_keeps_the_sparse_path():
    """All experts together wider than DENSE_MAX_WIDTH x hidden (Mixtral-8x7B's shape): no re-layout."""
    from pagedllm.models.layers.fused_moe import DENSE_MAX_WIDTH, FusedMoE

    moe = FusedMoE(num_experts=8, top_k=2, hidden_size=16, intermediate_size=DENSE_MAX_WIDTH * 2 + 1)
    moe = moe.to(torch.bfloat16)
    moe.prepack_for_cpu()
    assert moe.dense is None and moe.w2_weight.shape == (8, 16, DENSE_MAX_WIDTH * 2 + 1)
