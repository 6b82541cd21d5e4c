"""The Triton w4a16 GEMM (``kernels/w4a16_matmul``) against the float64 spec reference: compiled on CUDA,
in Triton's CPU interpreter here. GPTQ 4/8-bit (desc_act, group -1), AWQ, odd shapes, 1..64 rows."""
import numpy as np
import pytest
import torch
from paged_cases import DEVICE

from pagedllm.kernels import w4a16_matmul
from pagedllm.quantization.w4a16_format import unpack_awq, unpack_gptq
from pagedllm.quantization.w4a16_weight import W4A16Weight
from w4a16_reference import awq_tensors, gptq_tensors, product_bound, reference_awq, reference_gptq

CASES = [("gptq", 4, 32, True, 200, 40), ("gptq", 8, 64, False, 136, 24), ("gptq", 4, -1, False, 72, 8),
         ("awq", 4, 32, False, 97, 16)]


def on_device(weight: W4A16Weight) -> W4A16Weight:
    return W4A16Weight(weight.codes.to(DEVICE), weight.scales.to(DEVICE), weight.zeros.to(DEVICE),
                       weight.group_starts.to(DEVICE), weight.perm, weight.bits, weight.rows, weight.cols)


@pytest.mark.parametrize("rows", [1, 5, 17, 64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matmul_matches_float64(case, rows):
    method, bits, group_size, desc_act, in_features, out_features = case
    if method == "gptq":
        tensors = gptq_tensors(in_features, out_features, bits, group_size, desc_act, seed=rows)
        weight = W4A16Weight.from_unpacked(*unpack_gptq(*tensors, bits, group_size, 1), bits=bits)
        reference = reference_gptq(*tensors, bits, 1)
    else:
        tensors = awq_tensors(in_features, out_features, group_size, seed=rows)
        weight = W4A16Weight.from_unpacked(*unpack_awq(*tensors, group_size), bits=4)
        reference = reference_awq(*tensors, group_size)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
    ordered = x if weight.perm is None else x[:, weight.perm]
    out = w4a16_matmul.matmul(ordered.to(DEVICE), on_device(weight)).cpu().double().numpy()
    expected = x.double().numpy() @ reference.T
    assert np.all(np.abs(out - expected) <= product_bound(x.double().numpy(), reference))


def test_bfloat16_activations_within_their_rounding():
    tensors = gptq_tensors(128, 32, 4, 32, False, seed=0)
    weight = W4A16Weight.from_unpacked(*unpack_gptq(*tensors, 4, 32, 1), bits=4)
    reference = reference_gptq(*tensors, 4, 1)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = w4a16_matmul.matmul(x.to(DEVICE), on_device(weight)).cpu().double().numpy()
    xd = x.double().numpy()  # the bf16 activations exactly; the weights round to bf16 once (2^-8 relative)
    bound = 2.0 ** -8 * (np.abs(xd) @ np.abs(reference).T) + product_bound(xd, reference)
    assert np.all(np.abs(out - xd @ reference.T) <= bound)
