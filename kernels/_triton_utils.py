"""Host-side helpers shared by the attention kernels' wrappers.

``UPCAST_DOT`` exists because Triton's CPU interpreter (3.9 at least) multiplies the raw uint16
bit patterns of bfloat16 operands in ``tl.dot``: under the interpreter the kernels upcast bf16
operands to fp32 before ``tl.dot`` (exact), still rounding the softmax weights to bf16 first
(``P_DTYPE``) as the compiled bf16 path does. (The interpreter also rounds fp32->bf16 toward
zero where the GPU rounds to nearest even, so CPU-interpreted bf16 errors are an upper bound.)
The jit helpers are inlined in the kernels on purpose: each call of a jit function from an
interpreted kernel costs a re-patch of the language module, which dominated test time.
"""
from __future__ import annotations

import torch
import triton.language as tl

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on the CPU)."""
    return type(kernel).__name__ == "InterpretedFunction"


def dot_flags(kernel, dtype: torch.dtype) -> dict:
    """Constexpr flags for the kernels' ``tl.dot``s: exact fp32 products for fp32 inputs (no
    TF32 rounding), fp32 operands for bf16 under the interpreter."""
    if dtype not in _TL_DTYPES:
        raise TypeError(f"dtype must be one of float32, float16, bfloat16; got {dtype}")
    upcast = dtype == torch.bfloat16 and is_interpreted(kernel)
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32",
            "UPCAST_DOT": upcast, "P_DTYPE": _TL_DTYPES[dtype]}
