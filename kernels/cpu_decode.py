"""CPU paged decode attention: a small C kernel compiled at first use, called through ctypes.

Why: on CPU the torch path gathers every decode's K/V blocks into a padded copy and then runs
SDPA over it, so each K/V byte crosses memory three times and padding is computed too. The
C kernel (``cpu_paged_decode.c``) reads K/V straight from the paged cache, once, and only the
real context. It is plain C with OpenMP (no torch headers), so it compiles in about a second;
built and cached by ``cpu_build``. When no C compiler is found, or ``PAGEDLLM_CPU_KERNEL=0``,
``load()`` returns None and the torch backend keeps its gather + SDPA path (which is also the
kernel's test oracle).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from pagedllm.kernels import cpu_build, kv_fp8
from pagedllm.kernels.cpu_ops import rows_of_heads

SOURCE = Path(__file__).with_name("cpu_paged_decode.c")


def _declare(lib: ctypes.CDLL) -> None:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.paged_decode.argtypes = [p, p, p, p, i, p, p, i, i, i, i, i, f, i, f, p, i, p, i, i]
    lib.paged_decode.restype = i
    lib.store_kv.argtypes = [p, ctypes.c_long, p, ctypes.c_long, p, p, p, i, ctypes.c_long, ctypes.c_long, i]
    lib.store_kv.restype = i
    lib.paged_decode_fp8.argtypes = lib.paged_decode.argtypes
    lib.paged_decode_fp8.restype = i
    lib.store_kv_fp8.argtypes = [p, ctypes.c_long, p, ctypes.c_long, p, p, p, i, i, i, ctypes.c_long, i]
    lib.store_kv_fp8.restype = i


@dataclass(slots=True)
class DecodeStep:
    """A decode-only step's paged-attention arguments as the kernels take them (what ``store_kv`` and
    ``paged_decode`` derive per call), derived once per step by callers that run every layer themselves
    (``models/llama_cpu_decode.py``, ``cpu_decode_layers.py``). No sliding window."""

    slots: torch.Tensor  # int64 [n]
    tables: torch.Tensor  # int32 [n, max_blocks]
    lens: torch.Tensor  # int32 [n]
    window: int  # the longest context, at least 1: the scratch rows' length
    team: int  # threads over the sequences
    scratch: torch.Tensor  # float32 [team, heads * window]

    @classmethod
    def of(cls, md, heads: int) -> "DecodeStep":
        tables = md.decode_block_tables.to(torch.int32).contiguous()
        team, window = max(1, min(torch.get_num_threads(), tables.shape[0])), max(md.max_decode_context_len, 1)
        return cls(md.slot_mapping.contiguous(), tables, md.decode_context_lens.to(torch.int32).contiguous(), window,
                   team, torch.empty(team, heads * window, dtype=torch.float32))


def load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled kernel, or None (logged once) when it is disabled or cannot be built."""
    return cpu_build.load(SOURCE, _declare, "the torch gather + SDPA path", extra_flags)


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Dtypes and devices the kernel handles (others take the torch path): a cache of q's dtype, or fp8."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float32)
            and (k_cache.dtype == q.dtype or kv_fp8.is_fp8_cache(k_cache)))


def paged_decode(lib: ctypes.CDLL, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, context_lens: torch.Tensor, max_context_len: int, scale: float,
                 sliding_window: int | None = None, soft_cap: float | None = None,
                 alibi_slopes: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Attention of one query token per sequence over its paged K/V; None if the shape is too large.

    q: [B, H, D]; k/v_cache: [num_blocks, block_size, KVH, D] (fp8: uint8 [..., D + 2], codes and
    scale); block_tables: [B, max_blocks] int32; context_lens: [B] int32 (tokens in cache, the new
    one included); alibi_slopes: [H] float32.
    """
    B, H, D = q.shape
    _, bs, kvh, _ = k_cache.shape
    kernel = lib.paged_decode_fp8 if kv_fp8.is_fp8_cache(k_cache) else lib.paged_decode
    q = q.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    target = out
    if out is None or not out.is_contiguous():
        out = torch.empty_like(q)
    threads = max(1, min(torch.get_num_threads(), B))
    window = min(max_context_len, sliding_window) if sliding_window else max_context_len
    scratch = torch.empty(threads, H * max(window, 1), dtype=torch.float32)
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.to(torch.float32).contiguous()
        if alibi_slopes.shape != (H,):
            raise ValueError(f"alibi_slopes must have one slope per query head ({H}), got {tuple(alibi_slopes.shape)}")
    status = kernel(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), tables.shape[1],
                              lens.data_ptr(), out.data_ptr(), B, H, kvh, D, bs, float(scale),
                              int(sliding_window or 0), float(soft_cap or 0.0),
                              None if alibi_slopes is None else alibi_slopes.data_ptr(),
                              int(q.dtype == torch.bfloat16), scratch.data_ptr(),
                              max(window, 1), threads)
    if status:
        return None
    if target is not None and target is not out:
        target.copy_(out)
        return target
    return out


def store_kv(lib: ctypes.CDLL, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> bool:
    """Writes k/v [T, KVH, D] into the caches at ``slot_mapping`` (int64, -1: skip); False if not taken.

    One memcpy per row instead of torch's two ``index_copy_`` calls (plus a masked copy when some
    slots are padding): ~35 us per call for a 32-token decode step on one core, per layer.
    """
    if kv_fp8.is_fp8_cache(k_cache):
        return _store_kv_fp8(lib, k, v, k_cache, v_cache, slot_mapping)
    if not (k.device.type == v.device.type == k_cache.device.type == "cpu" and k.dtype == v.dtype == k_cache.dtype
            == v_cache.dtype and k.shape == v.shape and rows_of_heads(k) and rows_of_heads(v)
            and k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape
            and slot_mapping.dtype == torch.int64 and slot_mapping.shape == (k.shape[0],)):
        return False
    num_blocks, bs, kvh, d = k_cache.shape
    if (kvh, d) != tuple(k.shape[1:]):
        return False
    slots = slot_mapping.contiguous()
    status = lib.store_kv(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                          slots.data_ptr(), k.shape[0], kvh * d, num_blocks * bs, k.element_size())
    return status == 0


def _store_kv_fp8(lib: ctypes.CDLL, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> bool:
    """store_kv into an fp8 cache: each row quantized with its own scale (``kv_fp8``'s format)."""
    if not (k.device.type == v.device.type == k_cache.device.type == "cpu" and k.dtype == v.dtype
            and k.dtype in (torch.bfloat16, torch.float32) and v_cache.dtype == torch.uint8
            and k.shape == v.shape and rows_of_heads(k) and rows_of_heads(v)
            and k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape
            and slot_mapping.dtype == torch.int64 and slot_mapping.shape == (k.shape[0],)):
        return False
    num_blocks, bs, kvh, row = k_cache.shape
    d = k.shape[2]
    if kvh != k.shape[1] or row != kv_fp8.row_bytes(d):
        return False
    slots = slot_mapping.contiguous()
    status = lib.store_kv_fp8(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(),
                              v_cache.data_ptr(), slots.data_ptr(), k.shape[0], kvh, d, num_blocks * bs,
                              int(k.dtype == torch.bfloat16))
    return status == 0
