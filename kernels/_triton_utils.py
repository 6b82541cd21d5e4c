"""Host-side helpers shared by the attention kernels' wrappers.

``UPCAST_DOT`` exists because Triton's CPU interpreter (3.9 at least) multiplies the raw uint16
bit patterns of bfloat16 operands in ``tl.dot``: under the interpreter the kernels upcast bf16
operands to fp32 before ``tl.dot`` (exact), still rounding the softmax weights to bf16 first
(``P_DTYPE``) as the compiled bf16 path does. (The interpreter also rounds fp32->bf16 toward
zero where the GPU rounds to nearest even, so CPU-interpreted bf16 errors are an upper bound.)
Each call of a jit function from an interpreted kernel costs a re-patch of the language module,
which dominated test time when the kernels called small jit helpers once per tile: the one jit
helper they share (``_attention_tiles.attend_paged_tiles``) is called once per program.
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


def check_paged_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """What the attention wrappers require before they launch: query heads in whole groups per KV
    head (GQA/MQA), head_dim at stride 1 (the kernels index it with ``offs_d`` alone), one dtype."""
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("q, k_cache and v_cache must be contiguous in head_dim")
    if k_cache.dtype == torch.uint8 and k_cache.shape[-1] != q.shape[-1] + 2:
        raise ValueError(f"an fp8 cache has rows of head_dim + 2 bytes ({q.shape[-1] + 2}), got {k_cache.shape[-1]}")
    if q.dtype != k_cache.dtype and k_cache.dtype != torch.uint8 or k_cache.dtype != v_cache.dtype:
        raise TypeError(f"q, k_cache, v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, "
                        f"{v_cache.dtype}")
