"""The fp8 e4m3fn format written out from its definition (OCP FP8 spec, "fn": no infinities, one NaN
code), independent of torch's float8 dtype and of the code under test: the oracle of the fp8 tests.

e4m3fn byte: sign bit 7, exponent bits 6..3 with bias 7, mantissa bits 2..0; exponent 0 is subnormal
(``m / 8 * 2^-6``), otherwise ``(1 + m / 8) * 2^(e - 7)``; 0x7f/0xff are NaN; the largest value is 448.
"""
import numpy as np
import torch


def e4m3_value(byte: int) -> float:
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 15, byte & 7
    if exponent == 15 and mantissa == 7:
        return float("nan")
    if exponent == 0:
        return sign * mantissa / 8 * 2.0 ** -6
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


E4M3_TABLE = np.array([e4m3_value(b) for b in range(256)])  # float64


def reference_weight(codes: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """float64 [out, in]: each byte's spec value times its row's scale, rounded once to float32 (the value
    a dense float32 checkpoint of the dequantized weight holds)."""
    values = E4M3_TABLE[codes.view(torch.uint8).numpy().astype(np.int64)]
    return (values * scales.double().numpy()[:, None]).astype(np.float32).astype(np.float64)


def random_fp8(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes over every finite byte (subnormals, zeros and +-448 included) and positive scales."""
    gen = torch.Generator().manual_seed(seed)
    finite = torch.tensor([b for b in range(256) if b not in (0x7F, 0xFF)], dtype=torch.uint8)
    codes = finite[torch.randint(0, finite.numel(), (rows, cols), generator=gen)]
    scales = torch.rand(rows, generator=gen) * 0.01 + 1e-4
    return codes.view(torch.float8_e4m3fn), scales


def product_bound(x: np.ndarray, w: np.ndarray, roundings: int | None = None) -> np.ndarray:
    """``roundings`` (default k + 1) float32 roundings of the sum of |x||w|: a float32 dot's error bound."""
    k = x.shape[1] if roundings is None else roundings
    return (k + 1) * 2.0 ** -24 * (np.abs(x) @ np.abs(w).T) + 1e-30
