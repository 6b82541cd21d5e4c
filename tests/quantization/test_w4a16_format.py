"""GPTQ/AWQ unpacking and the shared w4a16 layout against the float64 spec reference (``w4a16_reference``)."""
import numpy as np
import pytest
import torch

from pagedllm.kernels import cpu_w4a16
from pagedllm.quantization.w4a16_format import unpack_awq, unpack_gptq
from pagedllm.quantization.w4a16_weight import W4A16Weight
from w4a16_reference import awq_tensors, gptq_tensors, product_bound, reference_awq, reference_gptq


def gptq_weight(qweight, qzeros, scales, g_idx, bits, group_size, zero_offset) -> W4A16Weight:
    return W4A16Weight.from_unpacked(*unpack_gptq(qweight, qzeros, scales, g_idx, bits, group_size, zero_offset),
                                     bits=bits)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("zero_offset", [0, 1])
def test_gptq_dequantize_matches_reference(bits, group_size, desc_act, zero_offset):
    tensors = gptq_tensors(200, 72, bits, group_size, desc_act)
    weight = gptq_weight(*tensors, bits, group_size, zero_offset)
    expected = reference_gptq(*tensors, bits, zero_offset)
    assert (weight.perm is not None) == (desc_act and group_size != -1)  # one group needs no reordering
    # (code - zero) is an exact small integer and the scale a float16: float32 holds the product exactly
    np.testing.assert_array_equal(weight.dequantize().double().numpy(), expected)


@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_awq_dequantize_matches_reference(group_size):
    tensors = awq_tensors(264, 56, group_size)
    weight = W4A16Weight.from_unpacked(*unpack_awq(*tensors, group_size), bits=4)
    np.testing.assert_array_equal(weight.dequantize().double().numpy(), reference_awq(*tensors, group_size))


@pytest.mark.parametrize("rows", [1, 3, 17, 64, 256])
@pytest.mark.parametrize("case", [("gptq", 4, 32, True), ("gptq", 8, 64, False), ("gptq", 4, -1, False),
                                  ("awq", 4, 128, False), ("awq", 4, 32, False)])
@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_matmul_matches_float64(rows, case, path, monkeypatch):
    """Both ways ``W4A16Weight.matmul`` computes: the C kernel (rows <= 16) or its dequantize + GEMM, and the
    torch dequantization used where the kernel cannot be built (activations reordered by ``perm`` either way)."""
    if path == "torch":
        monkeypatch.setattr(cpu_w4a16, "load", lambda *args: None)
    method, bits, group_size, desc_act = case
    in_features, out_features = (328, 40) if method == "gptq" else (136, 24)
    if method == "gptq":
        tensors = gptq_tensors(in_features, out_features, bits, group_size, desc_act, seed=rows)
        weight, w = gptq_weight(*tensors, bits, group_size, 1), reference_gptq(*tensors, bits, 1)
    else:
        tensors = awq_tensors(in_features, out_features, group_size, seed=rows)
        weight = W4A16Weight.from_unpacked(*unpack_awq(*tensors, group_size), bits=4)
        w = reference_awq(*tensors, group_size)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
    out = weight.matmul(x).double().numpy()
    expected = x.double().numpy() @ w.T
    assert np.all(np.abs(out - expected) <= product_bound(x.double().numpy(), w))


def test_stacked_shards_keep_their_rows():
    """q|k|v shards with one column order become one matrix whose rows are the shards' rows in turn."""
    parts = [gptq_tensors(96, n, 4, 32, True, seed=1) for n in (32, 16)]
    parts[1] = parts[1][:3] + (parts[0][3],)  # the same g_idx (one input, one activation order)
    weights = [gptq_weight(*t, 4, 32, 1) for t in parts]
    assert weights[0].same_columns(weights[1])
    stacked = W4A16Weight.stack(weights)
    expected = np.concatenate([reference_gptq(*t, 4, 1) for t in parts])
    np.testing.assert_array_equal(stacked.dequantize().double().numpy(), expected)


def test_shape_mismatch_names_the_tensor():
    qweight, qzeros, scales, g_idx = gptq_tensors(64, 16, 4, 32, False)
    with pytest.raises(ValueError, match=r"scales is \[2, 8\]; expected \[2, 16\]"):
        unpack_gptq(qweight, qzeros, scales[:, :8], g_idx, 4, 32, 1)
    with pytest.raises(ValueError, match=r"g_idx is \[63\]; expected \[64\]"):
        unpack_gptq(qweight, qzeros, scales, g_idx[:63], 4, 32, 1)
