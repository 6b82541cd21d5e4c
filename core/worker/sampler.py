"""Batched sampling over one step: every request's parameters become row tensors.

Greedy rows take the argmax. Random rows apply temperature, then top-k, top-p and min-p
(one descending sort shared by top-k and top-p, only when some row asks for them), then draw
with the exponential-race trick ``argmax(p / E)``, ``E ~ Exp(1)``; seeded rows draw their
noise from their own generator so their text does not depend on the rest of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.sampling_params import SamplingParams, SamplingType


@dataclass(slots=True)
class SamplingBatch:
    temperature: torch.Tensor  # [B] float32 (1.0 on greedy rows)
    top_p: torch.Tensor  # [B]
    top_k: torch.Tensor  # [B] int64, vocab size when disabled
    min_p: torch.Tensor  # [B]
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    generators: list  # per row: torch.Generator or None

    @classmethod
    def build(cls, params: list[SamplingParams], generators: list, vocab_size: int, device) -> "SamplingBatch":
        greedy = [p.sampling_type is SamplingType.GREEDY for p in params]
        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
        top_k = [p.top_k if p.top_k > 0 else vocab_size for p in params]
        kw = dict(device=device)
        return cls(
            temperature=torch.tensor(temps, dtype=torch.float32, **kw),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, **kw),
            top_k=torch.tensor(top_k, dtype=torch.int64, **kw).clamp_(max=vocab_size),
            min_p=torch.tensor([p.min_p for p in params], dtype=torch.float32, **kw),
            greedy=torch.tensor(greedy, dtype=torch.bool, **kw),
            all_greedy=all(greedy),
            any_top_k=any(not g and k < vocab_size for g, k in zip(greedy, top_k)),
            any_top_p=any(not g and p.top_p < 1.0 for g, p in zip(greedy, params)),
            any_min_p=any(not g and p.min_p > 0.0 for g, p in zip(greedy, params)),
            generators=generators,
        )


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p nucleus."""
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    V = logits.shape[-1]
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_k is not None:
        ranks = torch.arange(V, device=logits.device).unsqueeze(0)
        remove |= ranks >= top_k.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        cum_before = probs.cumsum(dim=-1) - probs  # mass strictly above this token
        remove |= cum_before > top_p.unsqueeze(1)
    return logits.scatter(-1, sorted_idx, torch.where(remove, float("-inf"), sorted_logits))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


class Sampler:
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """logits: [B, V] float32 -> (token ids [B], logprob of each sampled token [B])."""
        raw_logprob_norm = torch.logsumexp(logits, dim=-1)
        greedy_tokens = logits.argmax(dim=-1)
        if batch.all_greedy:
            tokens = greedy_tokens
        else:
            x = logits / batch.temperature.unsqueeze(1)
            if batch.any_top_k or batch.any_top_p:
                x = apply_top_k_top_p(x, batch.top_k if batch.any_top_k else None,
                                      batch.top_p if batch.any_top_p else None)
            if batch.any_min_p:
                x = apply_min_p(x, batch.min_p)
            probs = x.softmax(dim=-1)
            noise = torch.empty_like(probs).exponential_()
            for row, gen in enumerate(batch.generators):
                if gen is not None:
                    noise[row].exponential_(generator=gen)
            sampled = (probs / noise).argmax(dim=-1)
            tokens = torch.where(batch.greedy, greedy_tokens, sampled)
        logprobs = logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - raw_logprob_norm
        return tokens, logprobs
