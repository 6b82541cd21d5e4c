"""KV cache sizing and allocation: one [num_blocks, block_size, kv_heads, head_dim] pair per layer.

With ``kv_cache_dtype="fp8"`` each pair is uint8 ``[num_blocks, block_size, kv_heads, head_dim + 2]``:
e4m3 codes and a bf16 scale per row (``pagedllm.kernels.kv_fp8``), and a block's bytes count both.
"""
from __future__ import annotations

import logging

import torch

from pagedllm.kernels import kv_fp8

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30  # vLLM's CPU default (VLLM_CPU_KVCACHE_SPACE=4 GiB)


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                    kv_cache_dtype: str = "auto") -> int:
    """K and V of every layer for ``block_size`` tokens (fp8: codes and scales)."""
    return 2 * num_layers * block_size * num_kv_heads * _row_bytes(head_dim, dtype, kv_cache_dtype)


def _row_bytes(head_dim: int, dtype: torch.dtype, kv_cache_dtype: str) -> int:
    if kv_fp8.is_fp8(kv_cache_dtype):
        return kv_fp8.row_bytes(head_dim)
    return head_dim * torch.empty((), dtype=dtype).element_size()


def allocate_kv_cache(attention_layers, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device, kv_cache_dtype: str = "auto") -> torch.Tensor:
    """Allocate the whole cache in one zeroed tensor and bind per-layer views to the layers.

    Zeroed so that a masked-out slot never holds NaN (0 * NaN would poison attention). On CPU the
    cache is an anonymous mmap: the OS supplies zero pages on first touch, so a 4 GiB cache costs
    nothing at start-up (torch.zeros wrote zeros for ~1.6 s).
    """
    first = attention_layers[0]
    row = first.head_dim
    if kv_fp8.is_fp8(kv_cache_dtype):
        row, dtype = kv_fp8.row_bytes(first.head_dim), torch.uint8
    shape = (2, len(attention_layers), num_blocks, block_size, first.num_kv_heads, row)
    if torch.device(device).type == "cpu":
        cache = _zeroed_host_tensor(shape, dtype)
    else:
        cache = torch.zeros(shape, dtype=dtype, device=device)
    for i, layer in enumerate(attention_layers):
        layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]
    return cache


def _zeroed_host_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zero pages from the OS, faulted in on first touch, 4 KiB at a time.

    Private: Python's default anonymous mapping is MAP_SHARED (shmem), whose faults cost ~25% more
    here. No transparent huge pages: on these VMs memory the host has not backed yet (all of it at
    first, and whatever the guest freed, which it reports back to the host) costs 6-10 us per 4 KiB
    on first touch either way, so a 2 MiB fault saves nothing and stalls one K/V write ~5 ms (the
    advice given before never applied: shmem ignores it)."""
    import math
    import mmap

    size = max(1, math.prod(shape) * torch.empty((), dtype=dtype).element_size())
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
    # frombuffer keeps a reference to the mapping for as long as the tensor lives.
    return torch.frombuffer(mmap.mmap(-1, size, **private), dtype=torch.uint8).view(dtype).view(shape)
