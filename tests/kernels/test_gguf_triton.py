"""The Triton GGUF GEMM (``kernels/gguf_matmul``) against float64 products of the ``gguf`` package's dequantized
weights: compiled on CUDA, in Triton's CPU interpreter here. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (the
K-quants as random blocks with sane scales, as test_cpu_gguf makes them); rows not a multiple of the tiles,
1..64 activation rows, bf16 activations, and the refusals."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from paged_cases import DEVICE
from test_cpu_gguf import make_blocks

from pagedllm.kernels import gguf_matmul


def _weight(name: str, rows: int, k: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(the quantized blocks, their float64 values)."""
    blocks = make_blocks(name, rows, k, seed)
    return torch.from_numpy(blocks), quants.dequantize(blocks, GGMLQuantizationType[name]).astype(np.float64)


def _bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """k float32 roundings of the sum of |x||w|: a float32 dot product's error bound."""
    return x.shape[1] * 2.0 ** -24 * (np.abs(x) @ np.abs(w).T) + 1e-30


@pytest.mark.parametrize("rows", [1, 17, 64])
@pytest.mark.parametrize("name", sorted(gguf_matmul.TYPES))
def test_matmul_matches_float64(name, rows):
    block = gguf_matmul.TYPES[name][1]
    k = block * (3 if rows > 1 else 2) if block == 32 else block * (1 if rows > 1 else 2)
    blocks, reference = _weight(name, 77, k, seed=rows)  # 77 weight rows: two tiles, the second partial
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    out = gguf_matmul.matmul(x.to(DEVICE), blocks.to(DEVICE), gguf_matmul.TYPES[name][0], k).cpu().double().numpy()
    xd = x.double().numpy()
    assert out.shape == (rows, 77)
    assert np.all(np.abs(out - xd @ reference.T) <= _bound(xd, reference))


def test_bfloat16_activations_within_their_rounding():
    blocks, reference = _weight("Q4_1", 40, 64, seed=3)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = gguf_matmul.matmul(x.to(DEVICE), blocks.to(DEVICE), 3, 64).cpu().double().numpy()
    xd = x.double().numpy()  # the bf16 activations exactly; the weights round to bf16 once (2^-8 relative)
    bound = 2.0 ** -8 * (np.abs(xd) @ np.abs(reference).T) + _bound(xd, reference)
    assert np.all(np.abs(out - xd @ reference.T) <= bound)


def test_bad_types_and_shapes_are_refused():
    blocks, _ = _weight("Q8_0", 4, 64, seed=4)
    x = torch.zeros(2, 64)
    with pytest.raises(ValueError, match="qtype=10 has no Triton kernel; supported: Q4_0, .*Q6_K"):
        gguf_matmul.matmul(x, blocks, 10, 64)
    with pytest.raises(ValueError, match=r"qweight must be uint8 \[rows, 34\] of Q8_0 rows of k=32"):
        gguf_matmul.matmul(x[:, :32], blocks, 8, 32)
    with pytest.raises(ValueError, match=r"x must be \[rows, 64\]"):
        gguf_matmul.matmul(x[:, :63], blocks, 8, 64)
