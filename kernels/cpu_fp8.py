"""Matmul and dequantize on fp8 (e4m3fn) weights with per-row scales for CPU tensors, through ``cpu_fp8.c``.

Why: a decode step reads every weight once per token; one byte a weight instead of two (bf16) or four
(float32) is what fp8 weights buy on a CPU, which has no fp8 arithmetic: the bytes are decoded to
float32 in registers, a row at a time, and dotted with the activations (w8a16). Functions return None
when the library cannot be built (no compiler, ``PAGEDLLM_CPU_KERNEL=0``); callers then take the torch
path (``Fp8Weight.dequantize``), which the tests also check against a float64 reference.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from pagedllm.kernels import cpu_build

SOURCE = Path(__file__).with_name("cpu_fp8.c")
_STATUS = {1: "k must be positive and at most the row stride", 4: "out of memory"}


def _declare(lib: ctypes.CDLL) -> None:
    p, i, l = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    lib.fp8_dequantize.argtypes = [p, l, p, l, l, p, i]
    lib.fp8_matmul.argtypes = [p, l, l, p, l, p, l, l, p, l, i]
    for fn in (lib.fp8_dequantize, lib.fp8_matmul):
        fn.restype = i


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    return cpu_build.load(SOURCE, _declare, "torch dequantize + matmul", extra_flags)


def _check(codes: torch.Tensor, scales: torch.Tensor) -> None:
    """The layout ``Fp8Weight`` promises, checked before pointers go to C."""
    if codes.dtype not in (torch.float8_e4m3fn, torch.uint8) or codes.dim() != 2 or codes.stride(1) != 1 \
            or codes.device.type != "cpu":
        raise ValueError(f"codes must be a CPU float8_e4m3fn (or uint8) [rows, cols] tensor with contiguous rows, "
                         f"got {codes.dtype} {list(codes.shape)}")
    if scales.dtype != torch.float32 or tuple(scales.shape) != (codes.shape[0],) or not scales.is_contiguous() \
            or scales.device.type != "cpu":
        raise ValueError(f"scales must be a contiguous CPU torch.float32 tensor of shape [{codes.shape[0]}], got "
                         f"{scales.dtype} {list(scales.shape)}")


def matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, lib: ctypes.CDLL | None = None,
           threads: int | None = None) -> torch.Tensor | None:
    """``x @ W.T`` in float32 for x [n, k], W = e4m3(codes) * scales[:, None]; None without the library."""
    _check(codes, scales)
    if x.dim() != 2 or x.shape[1] != codes.shape[1]:
        raise ValueError(f"x must be [rows, {codes.shape[1]}], got {list(x.shape)}")
    lib = lib or load()
    if lib is None:
        return None
    if x.dtype != torch.float32 or x.stride(1) != 1 or x.device.type != "cpu":
        x = x.to(device="cpu", dtype=torch.float32).contiguous()
    out = torch.empty(x.shape[0], codes.shape[0], dtype=torch.float32)
    if x.shape[0] and codes.shape[0]:
        status = lib.fp8_matmul(x.data_ptr(), x.stride(0), x.shape[0], codes.data_ptr(), codes.stride(0),
                                scales.data_ptr(), codes.shape[0], codes.shape[1], out.data_ptr(), out.stride(0),
                                threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"fp8_matmul failed: {_STATUS.get(status, status)}")
    return out


def dequantize(codes: torch.Tensor, scales: torch.Tensor, lib: ctypes.CDLL | None = None,
               threads: int | None = None) -> torch.Tensor | None:
    """The float32 [rows, k] weight; None without the library."""
    _check(codes, scales)
    lib = lib or load()
    if lib is None:
        return None
    out = torch.empty(codes.shape[0], codes.shape[1], dtype=torch.float32)
    if codes.shape[0]:
        status = lib.fp8_dequantize(codes.data_ptr(), codes.stride(0), scales.data_ptr(), codes.shape[0],
                                    codes.shape[1], out.data_ptr(), threads or torch.get_num_threads())
        if status:
            raise RuntimeError(f"fp8_dequantize failed: {_STATUS.get(status, status)}")
    return out
