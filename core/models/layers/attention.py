"""The attention layer models use: writes KV to its cache and attends, via the step's backend."""
import math

import torch
from torch import nn

from pagedllm.distributed import get_tp_rank
from pagedllm.forward_context import get_forward_context


class Attention(nn.Module):
    """Backend-agnostic paged attention; the engine binds ``k_cache``/``v_cache`` and ``impl``.

    ``alibi_slopes`` (one per local query head, as vLLM's ``Attention``) adds
    ``slope[h] * (key_pos - query_pos)`` to the attention scores after scaling.
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None, logits_soft_cap: float | None = None,
                 alibi_slopes: list[float] | None = None):
        super().__init__()
        if alibi_slopes is not None and len(alibi_slopes) != num_heads:
            raise ValueError(f"alibi_slopes has {len(alibi_slopes)} entries; expected one per head ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
        self.alibi_slopes = None if alibi_slopes is None else [float(x) for x in alibi_slopes]
        self.k_cache = self.v_cache = torch.tensor([])
        self.impl = None  # an AttentionBackend instance, set by the model runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, H*D], k/v: [T, KVH*D] -> [T, H*D]."""
        T = q.shape[0]
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        out = self.impl.forward(q, k, v, self.k_cache, self.v_cache, get_forward_context())
        return out.reshape(T, self.num_heads * self.head_dim)


def layer_sliding_window(config, layer_idx: int, sliding_by_default: bool) -> int | None:
    """This layer's window: 5.x configs list ``layer_types``; older ones follow the family's pattern."""
    layer_types = getattr(config, "layer_types", None)
    sliding = layer_types[layer_idx] == "sliding_attention" if layer_types else sliding_by_default
    return getattr(config, "sliding_window", None) if sliding else None


def alibi_slopes(total_num_heads: int) -> list[float]:
    """ALiBi's geometric head slopes (Press et al.): ``2^(-8/n) ** (1..n)`` for the largest power of
    two ``n`` not above the head count, then every other slope of the ``2n`` series for the rest."""
    n = 2 ** math.floor(math.log2(total_num_heads))
    slopes = [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    extra = [2.0 ** (-8.0 * i / (2 * n)) for i in range(1, 2 * n, 2)]
    return slopes + extra[:total_num_heads - n]


def local_alibi_slopes(total_num_heads: int, num_local_heads: int) -> list[float]:
    """This tensor-parallel rank's share of the slopes (its query heads are a contiguous block)."""
    start = get_tp_rank() * num_local_heads
    return alibi_slopes(total_num_heads)[start:start + num_local_heads]
