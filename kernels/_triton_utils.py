"""Small Triton helpers shared by the attention kernels.

``dot`` exists because Triton's CPU interpreter (3.9 at least) multiplies the raw uint16 bit
patterns of bfloat16 operands in ``tl.dot``; under the interpreter the kernels upcast bf16
operands to fp32 first (exact, so results match the compiled bf16 MMA up to summation order).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on the CPU)."""
    return type(kernel).__name__ == "InterpretedFunction"


def dot_flags(kernel, dtype: torch.dtype) -> dict:
    """Constexpr flags for ``dot``: exact fp32 products for fp32 inputs (no TF32 rounding)."""
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
            "UPCAST_DOT": dtype == torch.bfloat16 and is_interpreted(kernel)}


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a @ b`` accumulated in fp32."""
    if UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def soft_cap_scores(s, soft_cap):
    """``soft_cap * tanh(s / soft_cap)``, tanh written with exp (no libdevice dependence)."""
    return soft_cap * (1.0 - 2.0 / (tl.exp(2.0 * s / soft_cap) + 1.0))
