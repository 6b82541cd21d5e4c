"""One vector per sequence from a step's flat hidden states, then each request's own finish.

The step packs sequences back to back (no padding), so pooling is a segment reduction over
``seq_lens``: MEAN averages a segment, CLS takes its first token, LAST its last. Matryoshka
truncation comes before normalisation, as in vLLM and sentence-transformers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.pooling.params import PoolingParams


def pool(hidden: torch.Tensor, seq_lens: list[int], pooling_type: str) -> torch.Tensor:
    """``hidden`` [sum(seq_lens), H] -> [len(seq_lens), H] in float32."""
    lens = torch.tensor(seq_lens, device=hidden.device)
    ends = torch.cumsum(lens, 0)
    if pooling_type == "CLS":
        return hidden[ends - lens].float()
    if pooling_type == "LAST":
        return hidden[ends - 1].float()
    if pooling_type != "MEAN":
        raise ValueError(f"pooling_type={pooling_type!r}; choose MEAN, CLS or LAST")
    segment = torch.repeat_interleave(torch.arange(len(seq_lens), device=hidden.device), lens)
    sums = torch.zeros(len(seq_lens), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, segment, hidden.float())
    return sums / lens.unsqueeze(1).to(torch.float32)


def finish(vectors: torch.Tensor, params: list[PoolingParams], normalize_by_default: bool) -> list[torch.Tensor]:
    """Each row cut to its request's ``dimensions`` and L2-normalised when it (or the model) asks."""
    out = []
    for row, p in zip(vectors, params):
        if p.dimensions is not None:
            row = row[:p.dimensions]
        if normalize_by_default if p.normalize is None else p.normalize:
            row = F.normalize(row, p=2, dim=-1)
        out.append(row)
    return out
