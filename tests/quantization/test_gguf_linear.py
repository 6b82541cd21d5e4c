"""GGUFLinearMethod and GGUFWeight on one layer: mixed shard types, the GEMM tile path, the reference
path without the C build, the embedding lookup, and the refusals. Oracle: float64 products of the
weights dequantized by the ``gguf`` package."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from pagedllm.kernels import cpu_gguf
from pagedllm.models.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.quantization import dequantized_matmul, gguf_weight
from pagedllm.quantization.gguf_linear import GGUFEmbedding, GGUFLinearMethod
from pagedllm.quantization.gguf_weight import GGUFWeight

T = GGMLQuantizationType


def quantized(name: str, rows: int, cols: int, seed: int) -> tuple[GGUFWeight, torch.Tensor]:
    """A GGUFWeight of ``name`` and its float64 dequantized values."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    blocks = quants.quantize(w, T[name])
    ref = torch.from_numpy(quants.dequantize(blocks, T[name])).double()
    return GGUFWeight(torch.from_numpy(blocks), int(T[name]), rows, cols, f"test.{name}"), ref


def _close(got, want64, k):
    err = (got.double() - want64).abs()
    assert bool((err <= k * 2.0 ** -24 * want64.abs().clamp_min(1) * 8).all()), f"max err {err.max():.3g}"


@pytest.mark.parametrize("m", [1, 5, 17, 256])
def test_mixed_qkv_shards_match_float64(m, float_activations):
    """q in Q8_0, k kept F16 (a float tensor), v in Q4_1: three parts, each multiplied in its own type."""
    layer = QKVParallelLinear(64, head_dim=16, num_heads=4, num_kv_heads=2, bias=True,
                              linear_method=GGUFLinearMethod())
    q, q64 = quantized("Q8_0", 64, 64, 1)
    k64 = torch.randn(32, 64, generator=torch.Generator().manual_seed(2)).half().double()
    v, v64 = quantized("Q4_1", 32, 64, 3)
    layer.weight.weight_loader(layer.weight, q, "q")
    layer.weight.weight_loader(layer.weight, k64.float(), "k")
    layer.weight.weight_loader(layer.weight, v, "v")
    layer.bias.data.copy_(torch.randn(128))
    layer.prepack_for_cpu()
    assert [w.type_name for w in layer.linear_method.weights] == ["Q8_0", "F32", "Q4_1"]
    x = torch.randn(m, 64, generator=torch.Generator().manual_seed(m))
    want = x.double() @ torch.cat([q64, k64, v64]).T + layer.bias.double()
    _close(layer(x), want, 64)


def test_shards_of_one_type_become_one_block_matrix():
    layer = QKVParallelLinear(64, head_dim=16, num_heads=4, num_kv_heads=2, linear_method=GGUFLinearMethod())
    for shard, rows in (("v", 32), ("q", 64), ("k", 32)):  # any load order
        layer.weight.weight_loader(layer.weight, quantized("Q4_0", rows, 64, rows)[0], shard)
    layer.prepack_for_cpu()
    (joined,) = layer.linear_method.weights
    assert (joined.rows, joined.type_name, tuple(joined.data.shape)) == (128, "Q4_0", (128, 36))


def test_tile_path_and_direct_kernel_agree_with_float64(monkeypatch, float_activations):
    """Rows above SMALL_BATCH go through dequantized tiles and a GEMM; more weight rows than one tile."""
    monkeypatch.setattr(dequantized_matmul, "TILE_WEIGHTS", 512 * 96)  # 512-row tiles
    w, w64 = quantized("Q5_1", 512 + 77, 96, 4)
    for m in (1, gguf_weight.SMALL_BATCH, gguf_weight.SMALL_BATCH + 1, 200):
        x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
        _close(w.matmul(x), x.double() @ w64.T, 96)


def test_reference_path_without_the_c_build(monkeypatch):
    monkeypatch.setattr(cpu_gguf, "load", lambda extra_flags=(): None)
    w, w64 = quantized("Q8_0", 40, 64, 5)
    x = torch.randn(3, 64)
    _close(w.matmul(x), x.double() @ w64.T, 64)


def test_embedding_dequantizes_only_the_rows_it_reads():
    w, w64 = quantized("Q8_0", 100, 64, 6)
    emb = GGUFEmbedding(w, torch.float32)
    ids = torch.tensor([[3, 99], [0, 3]])
    assert torch.equal(emb(ids).double(), w64[ids])


def test_type_without_kernel_is_refused_naming_it():
    layer = RowParallelLinear(256, 8, linear_method=GGUFLinearMethod())
    iq2 = GGUFWeight(torch.zeros(8, 66, dtype=torch.uint8), int(T.IQ2_XXS), 8, 256, "blk.0.ffn_down.weight")
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight' has type IQ2_XXS, which has no CPU kernel.*"
                                         r"Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.*"
                                         r"dequantize_gguf=True"):
        layer.weight.weight_loader(layer.weight, iq2)


def test_wrong_shape_and_missing_rows_are_refused():
    layer = QKVParallelLinear(64, head_dim=16, num_heads=4, num_kv_heads=2, linear_method=GGUFLinearMethod())
    with pytest.raises(ValueError, match=r"is \[32, 64\]; the layer's shard 'q' needs \[64, 64\]"):
        layer.weight.weight_loader(layer.weight, quantized("Q4_0", 32, 64, 1)[0], "q")
    layer.weight.weight_loader(layer.weight, quantized("Q4_0", 64, 64, 1)[0], "q")
    with pytest.raises(ValueError, match="cover 64 of 128 rows"):
        layer.prepack_for_cpu()
