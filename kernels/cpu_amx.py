"""The Python side of ``cpu_amx.h``'s ``amx_matmul``: the operands its callers (GGUF blocks, GPTQ/AWQ codes)
hand it, prepared in one place."""
from __future__ import annotations

import torch

OUT_DTYPES = (torch.float32, torch.bfloat16)


def operands(x: torch.Tensor, rows: int, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as the kernel reads it (float32 or bf16 rows on the CPU, unit column stride; else a float32 copy)
    and the empty [x rows, ``rows``] output in ``out_dtype`` (float32, or bf16 the kernel rounds itself)."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype={out_dtype} is not supported; choose torch.float32 or torch.bfloat16")
    if x.dtype not in OUT_DTYPES or x.stride(1) != 1 or x.device.type != "cpu":
        x = x.to(device="cpu", dtype=torch.float32).contiguous()
    return x, torch.empty(x.shape[0], rows, dtype=out_dtype)
