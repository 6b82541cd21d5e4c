"""An fp8 weight (float8 e4m3fn, one float32 scale per output row) and its products (w8a16).

Why per output row: one scale per channel (``amax / 448``, e4m3's largest finite value) keeps each
row's own range, as vLLM's per-channel fp8; a per-tensor checkpoint scale is the special case of every
row of a shard sharing one value, so both load into this one layout. Activations stay in the compute
dtype: CPUs have no fp8 arithmetic, so the bytes are decoded to float (``kernels/cpu_fp8.c`` on CPU,
``kernels/fp8_matmul.py`` on CUDA) and the weight is ``e4m3(code) * scale`` rounded once to float32.

- ``codes``: torch.float8_e4m3fn [out, in] (one byte a weight: half of bf16);
- ``scales``: float32 [out].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.kernels import cpu_fp8
from pagedllm.quantization.dequantized_matmul import TILE_WEIGHTS
from pagedllm.quantization.gguf_weight import SMALL_BATCH

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


def quantize_per_channel(weight: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes float8_e4m3fn [out, in], scales float32 [out]) with ``scale = amax(|row|) / 448`` (1 for an
    all-zero row); codes are the row divided by its scale, clamped to +-448 and rounded to nearest even.
    ``amax``: the rows' amax when ``weight`` holds only some columns of them (a row-parallel shard)."""
    w = weight.detach().to(torch.float32)
    if amax is None:
        amax = w.abs().amax(dim=1) if w.shape[1] else torch.zeros(w.shape[0])
    scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    codes = (w / scales[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes.contiguous(), scales.contiguous()


@dataclass(eq=False)
class Fp8Weight:
    codes: torch.Tensor
    scales: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor, amax: torch.Tensor | None = None) -> "Fp8Weight":
        return cls(*quantize_per_channel(weight, amax))

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def cols(self) -> int:
        return self.codes.shape[1]

    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight [out, in]: ``e4m3 * scale`` in float32 (one rounding), then ``dtype``."""
        return (self.codes.to(torch.float32) * self.scales[:, None]).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for x [n, in] (float32 on CPU's row kernel, else x's dtype).

        On CPU: up to ``SMALL_BATCH`` rows (decode) the C kernel multiplies row by row from the bytes; more
        rows (prefill, batches) dequantize a tile of rows at a time to x's dtype and use torch's GEMM,
        which is faster there. On CUDA the Triton kernel decodes tiles in registers. Without the C kernel
        the weight is dequantized in torch per call."""
        if x.device.type == "cuda":
            from pagedllm.kernels import fp8_matmul

            return fp8_matmul.matmul(x, self.codes, self.scales)
        if x.device.type == "cpu":
            if x.shape[0] <= SMALL_BATCH:
                out = cpu_fp8.matmul(x, self.codes, self.scales)
                if out is not None:
                    return out
            lib = cpu_fp8.load()
            if lib is not None:
                tile_rows = max(1, TILE_WEIGHTS // max(1, self.cols))
                if tile_rows >= self.rows:
                    return F.linear(x, cpu_fp8.dequantize(self.codes, self.scales, lib).to(x.dtype))
                out = torch.empty(x.shape[0], self.rows, dtype=x.dtype)
                for start in range(0, self.rows, tile_rows):
                    end = min(self.rows, start + tile_rows)
                    tile = cpu_fp8.dequantize(self.codes[start:end], self.scales[start:end], lib)
                    out[:, start:end] = F.linear(x, tile.to(x.dtype))
                return out
        return F.linear(x, self.dequantize(x.dtype))
