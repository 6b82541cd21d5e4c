"""Bidirectional attention for encoders (BERT family): no KV cache, sequences packed back to back.

An encoder sees its whole input in one step, so there is nothing to cache: each sequence attends
over its own tokens only. The step's ``EncoderMetadata`` (in the forward context) gives the
segment lengths; each segment is one ``scaled_dot_product_attention`` call on its own rows, so no
token is padded and no [T, T] mask is built.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.forward_context import get_forward_context


@dataclass(slots=True)
class EncoderMetadata:
    """The packed step: ``seq_lens[i]`` tokens of sequence i, in order; rows past them only pad the step to a
    bucketed row count (their outputs are dropped; attention writes zeros there)."""

    seq_lens: list[int]


class EncoderAttention(nn.Module):
    """``alibi_slopes`` (one per head: jina-bert-v2) add ``-slope[h] * |i - j|`` to the scores, the
    symmetric ALiBi of an encoder (it replaces position embeddings)."""

    def __init__(self, num_heads: int, head_dim: int, scale: float, alibi_slopes: list[float] | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.alibi_slopes = None if alibi_slopes is None else torch.tensor(alibi_slopes, dtype=torch.float32)

    def _bias(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.alibi_slopes is None:
            return None
        pos = torch.arange(n, device=like.device)
        distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)
        return (-self.alibi_slopes.to(like.device)[:, None, None] * distance).to(like.dtype).unsqueeze(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [T, H*D] -> [T, H*D]."""
        md: EncoderMetadata = get_forward_context()
        T, H, D = q.shape[0], self.num_heads, self.head_dim
        # [1, H, T, D] views: 4-d inputs take torch's flash kernel on CPU (3-d ones fall to the slow math path)
        q, k, v = (t.view(1, T, H, D).transpose(1, 2) for t in (q, k, v))
        parts, start = [], 0
        for n in md.seq_lens:
            end = start + n
            parts.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                                        attn_mask=self._bias(n, q), scale=self.scale))
            start = end
        if start < T:  # the padding rows
            parts.append(q.new_zeros(1, H, T - start, D))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return out.transpose(1, 2).reshape(T, H * D)
