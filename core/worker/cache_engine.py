"""KV cache sizing and allocation: one [num_blocks, block_size, kv_heads, head_dim] pair per layer."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30  # vLLM's CPU default (VLLM_CPU_KVCACHE_SPACE=4 GiB)


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def allocate_kv_cache(attention_layers, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """Allocate the whole cache in one zeroed tensor and bind per-layer views to the layers.

    Zeroed so that a masked-out slot never holds NaN (0 * NaN would poison attention). On CPU the
    zeros come from calloc (through numpy): the OS hands out zero pages on first touch, so a
    4 GiB cache costs nothing at start-up instead of ~1.6 s of writing zeros.
    """
    first = attention_layers[0]
    shape = (2, len(attention_layers), num_blocks, block_size, first.num_kv_heads, first.head_dim)
    if torch.device(device).type == "cpu":
        import numpy as np

        numel = 1
        for n in shape:
            numel *= n
        raw = torch.from_numpy(np.zeros(numel * torch.empty((), dtype=dtype).element_size(), dtype=np.uint8))
        cache = raw.view(dtype).view(shape)
    else:
        cache = torch.zeros(shape, dtype=dtype, device=device)
    for i, layer in enumerate(attention_layers):
        layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]
    return cache
