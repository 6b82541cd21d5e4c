"""The Triton fp8 GEMM (``kernels/fp8_matmul``) against the float64 e4m3fn spec reference: compiled on CUDA,
in Triton's CPU interpreter here. Every finite byte, odd shapes, 1..64 rows, float32 and bf16 activations."""
import numpy as np
import pytest
import torch
from paged_cases import DEVICE

from fp8_reference import product_bound, random_fp8, reference_weight
from pagedllm.kernels import fp8_matmul


@pytest.mark.parametrize("rows", [1, 5, 17, 64])
@pytest.mark.parametrize("shape", [(40, 200), (8, 72), (70, 97)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matmul_matches_float64(shape, rows):
    codes, scales = random_fp8(*shape, seed=rows)
    reference = reference_weight(codes, scales)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    out = fp8_matmul.matmul(x.to(DEVICE), codes.to(DEVICE), scales.to(DEVICE)).cpu().double().numpy()
    xd = x.double().numpy()
    # the kernel sums e4m3 * x and applies the scale once: one more rounding than a dense product
    assert np.all(np.abs(out - xd @ reference.T) <= product_bound(xd, reference, shape[1] + 2))


def test_bfloat16_activations_are_exact_products():
    """Every e4m3 value is exact in bf16, so bf16 activations add no rounding of the weights."""
    codes, scales = random_fp8(32, 128, seed=0)
    reference = reference_weight(codes, scales)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = fp8_matmul.matmul(x.to(DEVICE), codes.to(DEVICE), scales.to(DEVICE)).cpu().double().numpy()
    xd = x.double().numpy()
    assert np.all(np.abs(out - xd @ reference.T) <= product_bound(xd, reference, 128 + 2))


def test_bad_inputs_are_refused():
    codes, scales = random_fp8(8, 16, seed=0)
    with pytest.raises(ValueError, match=r"x must be \[rows, 16\]"):
        fp8_matmul.matmul(torch.zeros(2, 15, device=DEVICE), codes.to(DEVICE), scales.to(DEVICE))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        fp8_matmul.matmul(torch.zeros(2, 16, dtype=torch.float64, device=DEVICE), codes.to(DEVICE), scales.to(DEVICE))
