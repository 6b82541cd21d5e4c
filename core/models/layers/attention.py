"""The attention layer models use: writes KV to its cache and attends, via the step's backend."""
import torch
from torch import nn

from pagedllm.forward_context import get_forward_context


class Attention(nn.Module):
    """Backend-agnostic paged attention; the engine binds ``k_cache``/``v_cache`` and ``impl``."""

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None, logits_soft_cap: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
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
