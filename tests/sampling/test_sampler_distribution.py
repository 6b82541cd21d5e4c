"""What production samples from: empirical frequencies of the Sampler's own draws against the
float64 temperature / min-p / top-k / top-p distribution written out here.

Each case is one logits row repeated N = 20,000 times in a batch and drawn by ``Sampler()``
exactly as a step does, through both of its paths: the small-k path (``fast_topk`` candidates,
then ``_mask_sorted`` and the exponential race) and the full-vocabulary path. Seeds are fixed, so
the statistics are deterministic. Bounds: no draw outside the reference support, total-variation
distance <= 0.02 (the expected sampling error is about 0.5 * sum sqrt(p / N) ~ 0.01 for these
~30-token supports), and a chi-square statistic below the 1e-4 quantile.
"""
from __future__ import annotations

import zlib

import pytest
import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.sampler import _TOPK_FAST_MAX, Sampler, SamplingBatch
from test_sampler_reference import fake_seq, reference as processed_reference

V_SMALL_K = 4096  # wide enough for fast_topk's chunked path (V / 64 >= 4 k)
V_FULL = 1536  # the full-vocabulary path costs N x V: no wider than the k-past-the-fast-path case needs
N = 20_000
HEAD = 30  # tokens that carry the mass; the tail sits ~13 nats below


def peaked_logits(seed: int, V: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(V, generator=g) * 0.5 - 12.0
    head = torch.randperm(V, generator=g)[:HEAD]
    x[head] = torch.randn(HEAD, generator=g) * 1.5
    return x


def reference(logits: torch.Tensor, p: SamplingParams, seq) -> torch.Tensor:
    """float64 probabilities as vLLM defines them: the processing (logit bias, penalties: the float64
    reference of test_sampler_reference), then temperature, min-p, top-k, top-p."""
    x = processed_reference(logits, p, seq)[0] / p.temperature
    if p.min_p > 0:
        probs = x.softmax(-1)
        x[probs < probs.max() * p.min_p] = float("-inf")
    if p.top_k > 0:
        kth = x.sort(descending=True).values[p.top_k - 1]
        x[x < kth] = float("-inf")
    if p.top_p < 1.0:
        asc, idx = x.sort()
        cum = asc.softmax(-1).cumsum(-1)
        drop = cum <= 1 - p.top_p  # the smallest set whose mass reaches top_p stays
        drop[-1] = False
        x[idx[drop]] = float("-inf")
    return x.softmax(-1)


def draw(logits: torch.Tensor, p: SamplingParams, seq, seeded: bool) -> torch.Tensor:
    """N draws through the production sampler, 5,000 rows per call; counts per token."""
    V = logits.shape[0]
    counts = torch.zeros(V, dtype=torch.float64)
    torch.manual_seed(1234)
    for chunk in range(N // 5000):
        gens = ([torch.Generator().manual_seed(chunk * 5000 + i) for i in range(5000)] if seeded
                else [None] * 5000)
        batch = SamplingBatch.build([p] * 5000, gens, V, "cpu", seqs=[seq] * 5000)
        batch.needs_logprob = False
        tokens, _, _ = Sampler()(logits.expand(5000, V).clone(), batch)
        counts += torch.bincount(torch.tensor(tokens), minlength=V).double()
    return counts


CASES = {
    "small-k": dict(temperature=0.7, top_k=10),
    "small-k + top-p": dict(temperature=1.3, top_k=12, top_p=0.8),
    "small-k + min-p": dict(temperature=1.0, top_k=8, min_p=0.1),
    # processed rows: a tail token (~-12) lifted into the head; penalties on the row's own history
    "small-k + logit_bias": dict(temperature=0.9, top_k=10, logit_bias={7: 13.0}),
    "small-k + penalties": dict(temperature=1.0, top_k=10, repetition_penalty=1.3, presence_penalty=0.5,
                                frequency_penalty=0.4, logit_bias={7: 13.0}),
    "full + top-p": dict(temperature=1.0, top_p=0.9),
    "full + min-p": dict(temperature=0.9, min_p=0.05),
    "full, no truncation": dict(temperature=1.0),
    "full, k past the fast path": dict(temperature=0.8, top_k=_TOPK_FAST_MAX + 10, top_p=0.95),
}


# every case from the global RNG; seeded requests (their own generator per row) on one case per path
RUNS = [(case, False) for case in CASES] + [("small-k + top-p", True), ("full + top-p", True)]


@pytest.mark.parametrize("case,seeded", RUNS, ids=[f"{c}-{'seeded' if s else 'global'}" for c, s in RUNS])
def test_production_draws_follow_the_float64_distribution(case, seeded):
    p = SamplingParams(**CASES[case])
    V = V_SMALL_K if case.startswith("small-k") else V_FULL
    logits = peaked_logits(zlib.crc32(case.encode()), V)
    top = logits.topk(3).indices.tolist()  # a history of head tokens, so the penalties move mass
    seq = fake_seq([top[0]], [top[1], top[1], top[2]]) if p.uses_penalties else fake_seq([1], [])
    want = reference(logits, p, seq)
    counts = draw(logits, p, seq, seeded)
    outside = counts[want == 0].sum()
    assert outside == 0, f"{int(outside)} draws of tokens the distribution excludes"
    freq = counts / counts.sum()
    tv = 0.5 * float((freq - want).abs().sum())
    assert tv <= 0.02, f"total variation {tv:.4f}"
    support = want > 1e-4  # chi-square over tokens expected at least twice
    expected = want[support] * N
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    # 1e-4 upper quantile of chi-square(dof), Wilson-Hilferty approximation
    z = 3.719
    bound = dof * (1 - 2 / (9 * dof) + z * (2 / (9 * dof)) ** 0.5) ** 3
    assert chi2 <= bound, f"chi-square {chi2:.1f} > {bound:.1f} (dof {dof})"
