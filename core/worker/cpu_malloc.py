"""Keep freed heap memory for reuse on CPU, so a step's activations stop page-faulting every step.

Why: glibc's malloc serves blocks above ``M_MMAP_THRESHOLD`` with fresh ``mmap``s and hands the top
of the heap back to the OS once more than ``M_TRIM_THRESHOLD`` of it is free. A step's activations
(megabytes each) then come back as new pages the kernel zero-fills on first touch, every step: on
MiniLM in bf16 (AMX, where the matmuls themselves are fast) that made a linear layer twice as slow
inside the engine as in a loop, and ``LLM.embed`` ran at 145 texts/s against 179 with the heap kept
(1,000 texts, same process, same machine). vLLM's CPU backend gets the same by asking users to
``LD_PRELOAD`` tcmalloc or jemalloc; ``mallopt`` does it in-process. The cost: the heap keeps up to
``TRIM_THRESHOLD`` free (RSS does not shrink after a peak by less than that). Blocks over 32 MiB (a
KV cache, weights) stay mmapped as before. ``PAGEDLLM_CPU_MALLOC_TUNING=0`` keeps glibc's defaults;
other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 512 << 20
ENV = "PAGEDLLM_CPU_MALLOC_TUNING"

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters are glibc's
    except (OSError, AttributeError):
        return False
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))
    return _applied
