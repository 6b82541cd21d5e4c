"""Fused RMSNorm, LayerNorm, MLP activations and rotary embeddings for CPU tensors, through a
small C library (``cpu_layer_ops.c``).

Why: a decode step on CPU runs ~10 small elementwise torch ops per layer (RMSNorm alone is
five: cast, pow, mean, rsqrt, mul), each a pass over memory plus several microseconds of
dispatch; one C call per norm or activation removes most of that. Numerics follow the unfused
Hugging Face models (float32 math, rounding where they round). Each function returns None when
it cannot take the tensors (no compiler, ``PAGEDLLM_CPU_KERNEL=0``, other dtypes or devices,
rows too wide) and the caller runs its torch code, which is also the tests' oracle.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from pagedllm.kernels import cpu_build

SOURCE = Path(__file__).with_name("cpu_layer_ops.c")
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}
MAX_COLS = 16384  # cpu_layer_ops.c's MAX_COLS: wider rows (norms, activation halves) are declined


def _declare(lib: ctypes.CDLL) -> None:
    p, i, l, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
    lib.rms_norm.argtypes = [p, l, p, l, p, p, p, i, i, f, i, i, i]
    lib.act_and_mul.argtypes = [p, l, p, i, i, i, i, i, i]
    lib.rotary_embedding.argtypes = [p, l, i, i, i, p, p, p, l, i, i, i, i]
    lib.layer_norm.argtypes = [p, l, p, l, p, l, p, p, p, p, p, p, p, i, i, f, i, i]
    for fn in (lib.rms_norm, lib.act_and_mul, lib.rotary_embedding, lib.layer_norm):
        fn.restype = i


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    return cpu_build.load(SOURCE, _declare, "the torch ops", extra_flags)


_VECTORIZED: bool | None = None


def vectorized() -> bool:
    """Whether this CPU runs the C ops' SIMD bodies (they are AVX-512). Elsewhere the ops run scalar
    loops, and exact GELU (``erfcf`` per element) and LayerNorm then lose to torch's own vectorized
    kernels at every size: on a 2-core AVX2 EPYC, single-threaded, GELU of 4096x1536 took 75 ms
    against torch's 5.4 and add+LayerNorm of 4096x384 4.4 ms against 1.2. Those layers bind to torch
    there (their ``_kernel_applies``); the norms and activations that still win stay in C."""
    global _VECTORIZED
    if _VECTORIZED is None:
        try:
            with open("/proc/cpuinfo") as f:
                _VECTORIZED = " avx512f" in f.read()
        except OSError:
            _VECTORIZED = False
    return _VECTORIZED


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    """2-D ``[rows, last]`` view with contiguous columns, or None when the C code cannot take x."""
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32) or x.dim() == 0:
        return None
    if x.dim() == 2 and x.stride(1) == 1:  # the usual case, without a reshape's dispatch
        return x
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def rows_of_heads(x: torch.Tensor) -> bool:
    """[T, heads, head_dim] with each token's heads contiguous (rows may be strided): the layout
    the C code takes for a stack of heads."""
    return x.dim() == 3 and x.stride(2) == 1 and x.stride(1) == x.shape[2]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             round_before_weight: bool = True, lib: ctypes.CDLL | None = None):
    """RMSNorm of ``x`` (+ ``residual``) times the float32 ``weight``; None if not taken.

    Returns ``out``, or ``(out, x + residual)`` with a residual. ``round_before_weight``: the normed
    value is rounded to x's dtype before the weight (Llama's ``weight * normed.to(dtype)``);
    False multiplies in float32 first (Gemma's ``normed * (1 + weight)``).
    """
    lib = lib or load()
    x2 = _rows(x)
    if lib is None or x2 is None or weight.dtype != torch.float32 or not weight.is_contiguous():
        return None
    r2 = None
    if residual is not None:
        r2 = _rows(residual)
        if r2 is None or residual.dtype != x.dtype or residual.shape != x.shape:
            return None
    rows, cols = x2.shape
    out = torch.empty(x.shape, dtype=x.dtype)
    res_out = torch.empty(x.shape, dtype=x.dtype) if residual is not None else None
    status = lib.rms_norm(x2.data_ptr(), x2.stride(0), None if r2 is None else r2.data_ptr(),
                          0 if r2 is None else r2.stride(0), None if res_out is None else res_out.data_ptr(),
                          out.data_ptr(), weight.data_ptr(), rows, cols, float(eps), int(round_before_weight),
                          int(x.dtype == torch.bfloat16), torch.get_num_threads())
    if status:
        return None
    return out if residual is None else (out, res_out)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
               *addends: torch.Tensor, second: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
               lib: ctypes.CDLL | None = None):
    """LayerNorm of ``x`` over its last dim, times ``weight`` plus ``bias`` (float32, contiguous, or
    None); None if not taken.

    With ``addends`` (one or two tensors of x's shape and dtype) the norm is of the sum
    ``x + addends[0] (+ addends[1])``, rounded after each add as torch's adds round, and the return
    is ``(out, sum)``: a parallel-residual block's three-way sum folded into the next norm.
    ``second``: the ``(weight, bias)`` of another norm of the same input (same eps), whose output
    comes after ``out``: ``(out, out2)`` or ``(out, out2, sum)``.
    """
    lib = lib or load()
    x2 = _rows(x)
    if lib is None or x2 is None or len(addends) > 2:
        return None
    for p in (weight, bias, *(second or ())):
        if p is not None and (p.dtype != torch.float32 or not p.is_contiguous() or p.shape != (x.shape[-1],)):
            return None
    add_args = [None, 0, None, 0]  # (pointer, row stride) of each addend
    for i, a in enumerate(addends):
        a2 = _rows(a) if a.dtype == x.dtype and a.shape == x.shape else None
        if a2 is None:
            return None
        add_args[2 * i: 2 * i + 2] = a2.data_ptr(), a2.stride(0)
    rows, cols = x2.shape
    out = torch.empty(x.shape, dtype=x.dtype)
    out2 = torch.empty(x.shape, dtype=x.dtype) if second is not None else None
    summed = torch.empty(x.shape, dtype=x.dtype) if addends else None
    w2, b2 = second or (None, None)
    status = lib.layer_norm(x2.data_ptr(), x2.stride(0), *add_args, _ptr(summed), out.data_ptr(), _ptr(weight),
                            _ptr(bias), _ptr(out2), _ptr(w2), _ptr(b2), rows, cols, float(eps),
                            int(x.dtype == torch.bfloat16), torch.get_num_threads())
    if status:
        return None
    if out2 is None and summed is None:
        return out
    return tuple(t for t in (out, out2, summed) if t is not None)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def act_and_mul(x: torch.Tensor, act: str, gated: bool = True, lib: ctypes.CDLL | None = None):
    """``act(x[..., :d]) * x[..., d:]`` (gated, last dim 2d) or ``act(x)``; None if not taken.

    ``act``: ``silu``, ``gelu_tanh`` (GELU's tanh approximation, HF's ``gelu_new``) or ``gelu`` (exact, erf).
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    lib = lib or load()
    x2 = _rows(x)
    if lib is None or x2 is None or (gated and x2.shape[1] % 2):
        return None
    rows, width = x2.shape
    d = width // 2 if gated else width
    out = torch.empty(*x.shape[:-1], d, dtype=x.dtype)
    status = lib.act_and_mul(x2.data_ptr(), x2.stride(0), out.data_ptr(), rows, d, ACTIVATIONS[act], int(gated),
                             int(x.dtype == torch.bfloat16), torch.get_num_threads())
    return None if status else out


def rotary_embedding_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      neox_style: bool, lib: ctypes.CDLL | None = None) -> torch.Tensor | None:
    """Rotates the heads of ``x`` [T, heads, head_dim] in place (as vLLM's rotary kernels); None if not taken.

    ``cos``/``sin``: [max_position, rotary_dim / 2] tables in x's dtype; the first rotary_dim dims
    of each head turn, NeoX-style halves or GPT-J-style interleaved pairs. Rounds as the unfused
    ``x * cos + rotate(x) * sin`` in x's dtype does, so results equal the torch path's.
    """
    lib = lib or load()
    if (lib is None or x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32)
            or not rows_of_heads(x) or cos.dtype != x.dtype or sin.dtype != x.dtype
            or not (cos.is_contiguous() and sin.is_contiguous()) or positions.dtype != torch.int64
            or positions.shape != (x.shape[0],)):
        return None
    positions = positions.contiguous()
    status = lib.rotary_embedding(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], x.shape[2], positions.data_ptr(),
                                  cos.data_ptr(), sin.data_ptr(), cos.shape[0], cos.shape[1], int(neox_style),
                                  int(x.dtype == torch.bfloat16), torch.get_num_threads())
    return None if status else x
