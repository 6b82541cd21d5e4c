"""The decoder layers of a Llama-family decode step on GGUF weights as one C call (``cpu_decode_layers.c``).

Why: the same ~10 kernel calls per layer that ``models/llama_cpu_decode.py`` makes from Python cost ~3 ms of
ctypes and tensor bookkeeping per single-stream step on a 2-core CPU, a quarter of the step. ``DecodeLayers``
holds the model's pointers (weights, caches, tables, the kernels themselves, taken from their libraries) in
C structs built once; ``run`` fills one step's and makes one call. The kernels are the same functions, so the
results are the same bits. ``build`` returns None where the C build or a kernel library is missing.
"""
from __future__ import annotations

import ctypes
from ctypes import POINTER, c_float, c_int, c_long, c_void_p
from pathlib import Path

import torch

from pagedllm.kernels import cpu_build, cpu_decode, cpu_gguf, cpu_ops

SOURCE = Path(__file__).with_name("cpu_decode_layers.c")


class Weight(ctypes.Structure):
    _fields_ = [("blocks", c_void_p), ("row_bytes", c_long), ("type", c_int), ("rows", c_long), ("cols", c_long)]


class Layer(ctypes.Structure):
    _fields_ = [("input_norm", c_void_p), ("post_norm", c_void_p), ("qkv", Weight), ("o", Weight),
                ("gate_up", Weight), ("down", Weight), ("k_cache", c_void_p), ("v_cache", c_void_p),
                ("cos", c_void_p), ("sin", c_void_p), ("max_position", c_long), ("half", c_int), ("neox", c_int),
                ("scale", c_float)]


class Model(ctypes.Structure):
    _fields_ = [("rms_norm", c_void_p), ("matmul", c_void_p), ("rotary", c_void_p), ("store_kv", c_void_p),
                ("store_kv_fp8", c_void_p), ("paged_decode", c_void_p), ("act_and_mul", c_void_p), ("num_layers", c_int), ("width", c_int),
                ("heads", c_int), ("kv_heads", c_int), ("head_dim", c_int), ("intermediate", c_int),
                ("block_size", c_int), ("is_bf16", c_int), ("silu", c_int), ("num_slots", c_long), ("eps", c_float),
                ("layers", POINTER(Layer))]


class Step(ctypes.Structure):
    _fields_ = [("n", c_int), ("threads", c_int), ("team", c_int), ("max_blocks", c_int), ("window", c_int),
                ("positions", c_void_p), ("slots", c_void_p), ("tables", c_void_p), ("lens", c_void_p),
                ("scratch", c_void_p), ("hidden", c_void_p), ("residual", c_void_p), ("normed", c_void_p),
                ("summed", c_void_p), ("qkv", c_void_p), ("q", c_void_p), ("attn", c_void_p), ("o", c_void_p),
                ("gate_up", c_void_p), ("act", c_void_p)]


def _declare(lib: ctypes.CDLL) -> None:
    lib.decode_layers.argtypes = [POINTER(Model), POINTER(Step)]
    lib.decode_layers.restype = c_int


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    return cpu_build.load(SOURCE, _declare, "the Python loop of kernel calls", extra_flags)


def _address(fn) -> int:
    return ctypes.cast(fn, c_void_p).value


def weight(w) -> Weight:
    """The C view of a ``GGUFWeight`` (its blocks must outlive the struct: the model keeps them)."""
    return Weight(w.data.data_ptr(), w.data.shape[1], w.qtype, w.rows, w.cols)


class DecodeLayers:
    """``run(hidden, positions, md)`` -> (last MLP output, residual), or None when a kernel declined the step."""

    def __init__(self, lib, model: Model, layers, keep):
        self.lib, self.model, self.layers, self._keep = lib, model, layers, keep

    @classmethod
    def build(cls, layers: list[Layer], *, width: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
              block_size: int, num_slots: int, eps: float, dtype: torch.dtype,
              fp8_cache: bool = False) -> "DecodeLayers | None":
        """``fp8_cache``: the layers' caches are ``kv_fp8`` rows (e4m3 codes and a scale), stored and read by the
        fp8 kernels, as the attention backend does."""
        lib, ops, kernels, gguf = load(), cpu_ops.load(), cpu_decode.load(), cpu_gguf.load()
        if lib is None or ops is None or kernels is None or gguf is None or not cpu_gguf.has_q8(gguf):
            return None
        array = (Layer * len(layers))(*layers)
        store_fp8 = _address(kernels.store_kv_fp8) if fp8_cache else None
        decode = kernels.paged_decode_fp8 if fp8_cache else kernels.paged_decode
        model = Model(_address(ops.rms_norm), _address(gguf.gguf_matmul_q8), _address(ops.rotary_embedding),
                      _address(kernels.store_kv), store_fp8, _address(decode), _address(ops.act_and_mul),
                      len(layers), width, heads, kv_heads, head_dim, intermediate, block_size,
                      int(dtype == torch.bfloat16), cpu_ops.ACTIVATIONS["silu"], num_slots, eps, array)
        return cls(lib, model, array, (ops, kernels, gguf))

    def run(self, hidden: torch.Tensor, positions: torch.Tensor, md) -> tuple[torch.Tensor, torch.Tensor] | None:
        m = self.model
        n, width, dtype = hidden.shape[0], m.width, hidden.dtype
        q_size, kv_size = m.heads * m.head_dim, m.kv_heads * m.head_dim
        sizes = (width, width, width, q_size + 2 * kv_size, q_size, q_size, width, 2 * m.intermediate, m.intermediate)
        buffer = torch.empty(n * sum(sizes), dtype=dtype)
        residual, normed, summed, qkv, q, attn, o, gate_up, act = (
            t.view(n, size) for t, size in zip(buffer.split([n * s for s in sizes]), sizes))
        hidden, positions = hidden.contiguous(), positions.contiguous()
        a = cpu_decode.DecodeStep.of(md, m.heads)  # the attention arguments
        step = Step(n, torch.get_num_threads(), a.team, a.tables.shape[1], a.window, positions.data_ptr(),
                    a.slots.data_ptr(), a.tables.data_ptr(), a.lens.data_ptr(), a.scratch.data_ptr(), hidden.data_ptr(),
                    residual.data_ptr(), normed.data_ptr(), summed.data_ptr(), qkv.data_ptr(), q.data_ptr(),
                    attn.data_ptr(), o.data_ptr(), gate_up.data_ptr(), act.data_ptr())
        if self.lib.decode_layers(ctypes.byref(m), ctypes.byref(step)):
            return None
        return hidden, residual
