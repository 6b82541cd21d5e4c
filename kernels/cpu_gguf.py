"""Matmul and dequantize on GGUF block-quantized weights for CPU tensors, through ``cpu_gguf.c``.

Why: a quantized weight read as 4.5-bit blocks is ~7x fewer bytes than float32, and a decode step
is bound by reading weights. ``matmul`` dequantizes one weight row at a time into a buffer that
stays in L1 and dots it with every activation row, so the weight is read once per call, in its
block layout, and never held dense. Functions return None when the library cannot be built
(no compiler, ``PAGEDLLM_CPU_KERNEL=0``); callers then take the torch path
(``pagedllm.quantization.gguf_types.dequantize_torch``), which is also the tests' oracle.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable

import torch

from pagedllm.kernels import cpu_amx, cpu_build

SOURCE = Path(__file__).with_name("cpu_gguf.c")
# Types with a kernel in cpu_gguf.c -> (GGMLQuantizationType id, weights per block, bytes per block).
BLOCKS = {"Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
          "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144),
          "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210)}
TYPE_IDS = {name: spec[0] for name, spec in BLOCKS.items()}
_STATUS = {1: "no kernel for this type", 2: "k is not a whole number of blocks", 3: "row bytes do not match k",
           4: "out of memory", 6: "no AMX-BF16 on this CPU", 7: "no 8-bit activation path for this type or CPU"}
# Types gguf_matmul_q8 multiplies with 8-bit activations and integer dot products (cpu_q8.h).
Q8_ACTIVATION_TYPES = frozenset(TYPE_IDS[name] for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))


def _declare(lib: ctypes.CDLL) -> None:
    p, i, l = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    lib.gguf_supports.argtypes = [i]
    lib.gguf_dequantize.argtypes = [p, l, i, l, l, p, i, i]
    lib.gguf_matmul.argtypes = [p, l, l, p, l, i, l, l, p, l, i]
    lib.gguf_matmul_amx.argtypes = [p, i, l, l, p, l, i, l, l, p, l, i, i]
    lib.gguf_matmul_q8.argtypes = [p, i, l, l, p, l, i, l, l, p, i, l, i]
    lib.gguf_has_amx.argtypes = []
    lib.gguf_has_q8.argtypes = []
    for fn in (lib.gguf_supports, lib.gguf_dequantize, lib.gguf_matmul, lib.gguf_matmul_amx, lib.gguf_has_amx,
               lib.gguf_matmul_q8, lib.gguf_has_q8):
        fn.restype = i


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    return cpu_build.load(SOURCE, _declare, "torch dequantize + matmul (slow)", extra_flags)


def _type_name(qtype: int) -> str:
    for name, tid in TYPE_IDS.items():
        if tid == qtype:
            return name
    raise ValueError(f"qtype={qtype} has no CPU kernel; supported: {', '.join(TYPE_IDS)}")


def check_shape(qweight: torch.Tensor, qtype: int, k: int) -> None:
    """Raise ValueError unless ``qweight`` is uint8 [rows, bytes] holding rows of ``k`` weights of ``qtype``."""
    name = _type_name(qtype)
    _, block, size = BLOCKS[name]
    if not isinstance(k, int) or k <= 0 or k % block:
        raise ValueError(f"k={k} must be a positive multiple of {name}'s block of {block} weights")
    if qweight.dtype != torch.uint8 or qweight.dim() != 2 or qweight.shape[1] != k // block * size:
        raise ValueError(f"qweight must be uint8 [rows, {k // block * size}] for {name} rows of k={k}, got "
                         f"{qweight.dtype} {list(qweight.shape)}")
    if qweight.device.type != "cpu" or not qweight.is_contiguous():
        raise ValueError("qweight must be a contiguous CPU tensor")


def matmul(x: torch.Tensor, qweight: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None,
           threads: int | None = None, q8_activations: bool = False) -> torch.Tensor | None:
    """``x @ W.T`` in float32 for x [..., k] and the quantized W [rows, k]; None if the library is missing.
    With ``q8_activations`` a type of ``Q8_ACTIVATION_TYPES`` multiplies x rounded to 8-bit blocks with integer
    dot products where the build has them (``has_q8``; llama.cpp's decode numerics), float32 x otherwise."""
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {k}")
    run = row_kernel(qweight, qtype, k, q8_activations, lib)
    if run is None:
        return None
    out = run(x.reshape(-1, k), torch.float32, threads)
    return out.view(*x.shape[:-1], qweight.shape[0])


def row_kernel(qweight: torch.Tensor, qtype: int, k: int, q8_activations: bool = False,
               lib: ctypes.CDLL | None = None) -> Callable[..., torch.Tensor] | None:
    """``run(x, out_dtype=torch.float32, threads=None)``: ``matmul`` of x [m, k] (rows contiguous) by one weight,
    its checks done once (a decode step makes ~120 such calls, and per-call checks cost more than a small
    layer's product). On the 8-bit activation path x and the result may be bfloat16 (no conversion around the
    call in a bf16 model). None without the library."""
    check_shape(qweight, qtype, k)
    lib = lib or load()
    if lib is None:
        return None
    q8 = q8_activations and qtype in Q8_ACTIVATION_TYPES and has_q8(lib)
    rows, row_bytes = qweight.shape

    def run(x: torch.Tensor, out_dtype: torch.dtype = torch.float32, threads: int | None = None) -> torch.Tensor:
        if x.stride(-1) != 1 or x.device.type != "cpu" or x.dtype != torch.float32 and not (
                q8 and x.dtype == torch.bfloat16):
            x = x.to(device="cpu", dtype=torch.float32).contiguous()
        takes_bf16 = x.dtype == torch.bfloat16
        out_bf16 = q8 and out_dtype == torch.bfloat16
        out = torch.empty(x.shape[0], rows, dtype=torch.bfloat16 if out_bf16 else torch.float32)
        if not x.shape[0]:
            return out.to(out_dtype)
        if q8:
            status = lib.gguf_matmul_q8(x.data_ptr(), int(takes_bf16), x.stride(0), x.shape[0], qweight.data_ptr(),
                                        row_bytes, qtype, rows, k, out.data_ptr(), int(out_bf16), rows,
                                        threads or torch.get_num_threads())
        else:
            status = lib.gguf_matmul(x.data_ptr(), x.stride(0), x.shape[0], qweight.data_ptr(), row_bytes, qtype,
                                     rows, k, out.data_ptr(), rows, threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"gguf matmul failed: {_STATUS.get(status, status)}")
        return out if out.dtype == out_dtype else out.to(out_dtype)

    return run


_HAS_Q8: dict[int, bool] = {}


def has_q8(lib: ctypes.CDLL | None = None) -> bool:
    """Whether ``matmul(..., q8_activations=True)`` takes the integer path here (a build with AVX2)."""
    lib = lib or load()
    if lib is None:
        return False
    if id(lib) not in _HAS_Q8:
        _HAS_Q8[id(lib)] = bool(lib.gguf_has_q8())
    return _HAS_Q8[id(lib)]


def has_amx(lib: ctypes.CDLL | None = None) -> bool:
    """Whether ``matmul_amx`` runs on this machine (an AMX-BF16 CPU and kernel, and the C build)."""
    lib = lib or load()
    return lib is not None and bool(lib.gguf_has_amx())


def matmul_amx(x: torch.Tensor, qweight: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None,
               threads: int | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """``x @ W.T`` in ``out_dtype`` (float32, or bfloat16 rounded as ``.to`` does, written by the kernel) for
    x [m, k] (bf16 or float32, rounded to bf16) with the weight rounded to bf16 and the products summed in float32
    on AMX tiles: a bf16 GEMM's numerics. None without the library or AMX."""
    check_shape(qweight, qtype, k)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [rows, {k}], got {list(x.shape)}")
    lib = lib or load()
    if lib is None or not lib.gguf_has_amx():
        return None
    rows = qweight.shape[0]
    x, out = cpu_amx.operands(x, rows, out_dtype)
    if x.shape[0]:
        status = lib.gguf_matmul_amx(x.data_ptr(), int(x.dtype == torch.bfloat16), x.stride(0), x.shape[0],
                                     qweight.data_ptr(), qweight.shape[1], qtype, rows, k, out.data_ptr(),
                                     out.stride(0), int(out.dtype == torch.bfloat16), threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"gguf_matmul_amx failed: {_STATUS.get(status, status)}")
    return out


def dequantize(qweight: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None,
               threads: int | None = None, dtype: torch.dtype = torch.float32,
               out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The [rows, k] weights of ``qweight`` in ``dtype`` (float32, or bfloat16 rounded to nearest even), written
    to ``out`` when given (a reused buffer: no page faults per call); None if the library is missing."""
    check_shape(qweight, qtype, k)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is not supported; choose torch.float32 or torch.bfloat16")
    lib = lib or load()
    if lib is None:
        return None
    rows = qweight.shape[0]
    if out is None:
        out = torch.empty(rows, k, dtype=dtype)
    elif out.dtype != dtype or tuple(out.shape) != (rows, k) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {[rows, k]}, got {out.dtype} "
                         f"{list(out.shape)}")
    if rows:
        status = lib.gguf_dequantize(qweight.data_ptr(), qweight.shape[1], qtype, rows, k, out.data_ptr(),
                                     int(dtype == torch.bfloat16), threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"gguf_dequantize failed: {_STATUS.get(status, status)}")
    return out
