"""Matmul and dequantize on GPTQ/AWQ weights (the shared w4a16 layout) for CPU tensors, through ``cpu_w4a16.c``.

Why: a decode step reads every weight once per token; reading 4-bit codes (plus a scale and zero per
group) instead of float32 is what a quantized model buys. ``matmul`` dequantizes one weight row at a
time into a buffer that stays in L1 and dots it with every activation row. Functions return None when
the library cannot be built (no compiler, ``PAGEDLLM_CPU_KERNEL=0``); callers then take the torch path
(``W4A16Weight.dequantize``), which the tests also check against a float64 reference.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from pagedllm.kernels import cpu_amx, cpu_build

SOURCE = Path(__file__).with_name("cpu_w4a16.c")
_STATUS = {1: "bits must be 4 or 8", 2: "k and groups must be positive", 3: "row bytes do not match k",
           4: "out of memory", 5: "group starts must rise from 0 to k", 6: "no AMX-BF16 on this CPU"}


def _declare(lib: ctypes.CDLL) -> None:
    p, i, l = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    lib.w4a16_dequantize.argtypes = [p, l, i, p, p, p, l, l, l, p, i]
    lib.w4a16_matmul.argtypes = [p, l, l, p, l, i, p, p, p, l, l, l, p, l, i]
    lib.w4a16_matmul_amx.argtypes = [p, i, l, l, p, l, i, p, p, p, l, l, l, p, l, i, i]
    lib.w4a16_has_amx.argtypes = []
    for fn in (lib.w4a16_dequantize, lib.w4a16_matmul, lib.w4a16_matmul_amx, lib.w4a16_has_amx):
        fn.restype = i


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    return cpu_build.load(SOURCE, _declare, "torch dequantize + matmul", extra_flags)


def _check(weight) -> None:
    """The layout ``W4A16Weight`` promises, checked before pointers go to C."""
    expected = (weight.cols + 1) // 2 if weight.bits == 4 else weight.cols
    tensors = {"codes": (weight.codes, torch.uint8, (weight.rows, expected)),
               "scales": (weight.scales, torch.float32, (weight.rows, weight.groups)),
               "zeros": (weight.zeros, torch.float32, (weight.rows, weight.groups)),
               "group_starts": (weight.group_starts, torch.int32, (weight.groups + 1,))}
    for name, (t, dtype, shape) in tensors.items():
        if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of shape {list(shape)}, got {t.dtype} "
                             f"{list(t.shape)}")


def matmul(x: torch.Tensor, weight, lib: ctypes.CDLL | None = None, threads: int | None = None) -> torch.Tensor | None:
    """``x @ W.T`` in float32 for x [n, k] with columns already in the weight's group order; None without
    the library."""
    _check(weight)
    if x.dim() != 2 or x.shape[1] != weight.cols:
        raise ValueError(f"x must be [rows, {weight.cols}], got {list(x.shape)}")
    lib = lib or load()
    if lib is None:
        return None
    if x.dtype != torch.float32 or x.stride(1) != 1 or x.device.type != "cpu":
        x = x.to(device="cpu", dtype=torch.float32).contiguous()
    out = torch.empty(x.shape[0], weight.rows, dtype=torch.float32)
    if x.shape[0]:
        status = lib.w4a16_matmul(x.data_ptr(), x.stride(0), x.shape[0], weight.codes.data_ptr(),
                                  weight.codes.shape[1], weight.bits, weight.scales.data_ptr(),
                                  weight.zeros.data_ptr(), weight.group_starts.data_ptr(), weight.groups,
                                  weight.rows, weight.cols, out.data_ptr(), out.stride(0),
                                  threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"w4a16_matmul failed: {_STATUS.get(status, status)}")
    return out


def has_amx(lib: ctypes.CDLL | None = None) -> bool:
    """Whether ``matmul_amx`` runs on this machine (an AMX-BF16 CPU and kernel, and the C build)."""
    lib = lib or load()
    return lib is not None and bool(lib.w4a16_has_amx())


def matmul_amx(x: torch.Tensor, weight, lib: ctypes.CDLL | None = None, threads: int | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """``x @ W.T`` in ``out_dtype`` (float32, or bfloat16 rounded as ``.to`` does, written by the kernel) for
    x [n, k] (bf16 or float32, columns in the weight's group order) with x and the weight rounded to bf16 and the
    products summed in float32 on AMX tiles (``cpu_amx.h``): a bf16 GEMM's numerics. None without the library or
    AMX."""
    _check(weight)
    if x.dim() != 2 or x.shape[1] != weight.cols:
        raise ValueError(f"x must be [rows, {weight.cols}], got {list(x.shape)}")
    lib = lib or load()
    if lib is None or not lib.w4a16_has_amx():
        return None
    x, out = cpu_amx.operands(x, weight.rows, out_dtype)
    if x.shape[0]:
        status = lib.w4a16_matmul_amx(x.data_ptr(), int(x.dtype == torch.bfloat16), x.stride(0), x.shape[0],
                                      weight.codes.data_ptr(), weight.codes.shape[1], weight.bits,
                                      weight.scales.data_ptr(), weight.zeros.data_ptr(),
                                      weight.group_starts.data_ptr(), weight.groups, weight.rows, weight.cols,
                                      out.data_ptr(), out.stride(0), int(out.dtype == torch.bfloat16),
                                      threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"w4a16_matmul_amx failed: {_STATUS.get(status, status)}")
    return out


def dequantize(weight, lib: ctypes.CDLL | None = None, threads: int | None = None) -> torch.Tensor | None:
    """The float32 [rows, k] weight in its group order; None without the library."""
    _check(weight)
    lib = lib or load()
    if lib is None:
        return None
    out = torch.empty(weight.rows, weight.cols, dtype=torch.float32)
    status = lib.w4a16_dequantize(weight.codes.data_ptr(), weight.codes.shape[1], weight.bits,
                                  weight.scales.data_ptr(), weight.zeros.data_ptr(), weight.group_starts.data_ptr(),
                                  weight.groups, weight.rows, weight.cols, out.data_ptr(),
                                  threads or torch.get_num_threads())
    if status:
        raise RuntimeError(f"w4a16_dequantize failed: {_STATUS.get(status, status)}")
    return out
