"""The batched sampler's logits processing vs a plain float64 implementation of vLLM's formulas."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.sampler import SamplingBatch, Sampler, process_logits

V = 1000
EOS = 2


def fake_seq(prompt, output, bad_words_token_ids=()):
    ids = list(prompt) + list(output)
    return SimpleNamespace(token_ids=ids, num_tokens=len(ids), num_prompt_tokens=len(prompt),
                           num_output_tokens=len(output), output_token_ids=list(output), matcher=None,
                           eos_token_ids=(EOS,), bad_words_token_ids=list(bad_words_token_ids))


def reference(logits: torch.Tensor, p: SamplingParams, seq) -> tuple[torch.Tensor, torch.Tensor]:
    """float64, one row, step by step as vLLM documents it -> (processed, after temperature/min-p/top-k/top-p)."""
    x = logits.double().clone()
    out = seq.output_token_ids
    if p.allowed_token_ids is not None:
        keep = torch.zeros(V, dtype=torch.bool)
        keep[p.allowed_token_ids] = True
        x[~keep] = float("-inf")
    for word in seq.bad_words_token_ids:
        if len(word) == 1 or out[len(out) - len(word) + 1:] == word[:-1]:
            x[word[-1]] = float("-inf")
    if len(out) < p.min_tokens:
        for t in list(p.stop_token_ids) + list(seq.eos_token_ids):
            x[t] = float("-inf")
    for t, b in (p.logit_bias or {}).items():
        x[t] += b
    for t in set(seq.token_ids):
        if p.repetition_penalty != 1.0:
            x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t, c in Counter(out).items():
        x[t] -= p.frequency_penalty * c + p.presence_penalty
    processed = x.clone()
    if p.temperature == 0:
        return processed, None
    x = x / p.temperature
    if p.min_p > 0:
        probs = x.softmax(-1)
        x[probs < probs.max() * p.min_p] = float("-inf")
    if p.top_k > 0:
        asc = x.sort().values
        x[x < asc[V - p.top_k]] = float("-inf")
    if p.top_p < 1.0:
        asc, idx = x.sort()
        cum = asc.softmax(-1).cumsum(-1)
        drop = cum <= 1 - p.top_p
        drop[-1] = False
        x[idx[drop]] = float("-inf")
    return processed, x


def make_cases(seed: int):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=g))
    cases = []
    for i in range(12):
        prompt = torch.randint(0, V, (int(torch.randint(3, 40, (), generator=g)),), generator=g).tolist()
        output = torch.randint(0, 60, (int(torch.randint(0, 30, (), generator=g)),), generator=g).tolist()
        kw = dict(temperature=0.0 if i % 4 == 0 else r(0.3, 1.5), max_tokens=100)
        if i % 3 != 2:
            kw.update(presence_penalty=r(-2, 2), frequency_penalty=r(-2, 2), repetition_penalty=r(0.5, 2.0))
        if i % 2 == 0:
            kw.update(top_k=int(torch.randint(1, 200, (), generator=g)))
        if i % 5 != 4:
            kw.update(top_p=r(0.3, 0.99))
        if i % 3 == 1:
            kw.update(min_p=r(0.01, 0.2))
        if i % 4 == 1:
            kw.update(logit_bias={int(t): r(-100, 100) for t in torch.randint(0, V, (5,), generator=g)})
        if i == 5:
            kw.update(allowed_token_ids=list(range(10, 400, 3)))
        if i in (6, 7):
            kw.update(min_tokens=len(output) + (1 if i == 6 else 0), stop_token_ids=[7, 8])
        p = SamplingParams(**kw)
        bad = [[11], [output[-1] if output else 5, 12], [900, 901, 13]] if i == 3 else []
        cases.append((p, fake_seq(prompt, output, bad)))
    return cases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processing_matches_float64_reference(seed):
    cases = make_cases(seed)
    params = [p for p, _ in cases]
    seqs = [s for _, s in cases]
    logits = torch.randn(len(cases), V, generator=torch.Generator().manual_seed(100 + seed)) * 3
    batch = SamplingBatch.build(params, [None] * len(cases), V, "cpu", seqs=seqs)
    processed = process_logits(logits, batch)
    # What the sampler draws from is judged by test_sampler_distribution (frequencies of its own
    # draws); here: 64 draws of every row land inside the reference's support, penalties and all.
    torch.manual_seed(seed)
    draws = torch.tensor([Sampler()(logits.clone(), batch)[0] for _ in range(64)])  # [64, rows]
    checked = 0
    for i, (p, seq) in enumerate(cases):
        ref_proc, ref_dist = reference(logits[i], p, seq)
        _assert_same(processed[i], ref_proc, f"row {i} processed")
        if ref_dist is not None:
            assert bool(torch.isfinite(ref_dist[draws[:, i]]).all()), f"row {i} drew a masked token ({p})"
            checked += 1
    assert checked >= 6


def _assert_same(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    fin_got, fin_ref = torch.isfinite(got), torch.isfinite(ref)
    assert torch.equal(fin_got, fin_ref), f"{what}: {int((fin_got != fin_ref).sum())} tokens masked differently"
    torch.testing.assert_close(got[fin_got].double(), ref[fin_ref], rtol=1e-5, atol=1e-4, msg=what)


def test_greedy_rows_take_argmax_of_processed_logits():
    cases = make_cases(3)
    params = [p for p, _ in cases]
    seqs = [s for _, s in cases]
    logits = torch.randn(len(cases), V, generator=torch.Generator().manual_seed(7)) * 3
    batch = SamplingBatch.build(params, [None] * len(cases), V, "cpu", seqs=seqs)
    assert batch.needs_logprob == any(p.logprobs is not None or p.best_of is not None for p in params)
    batch.needs_logprob = True  # check the raw logprob of every row, not only those that ask
    tokens, logprobs, _ = Sampler()(logits, batch)
    for i, (p, seq) in enumerate(cases):
        ref_proc, ref_dist = reference(logits[i], p, seq)
        if p.temperature == 0:
            assert tokens[i] == int(ref_proc.argmax())
        else:
            assert torch.isfinite(ref_dist[tokens[i]]), f"row {i} sampled a masked token"
        raw = torch.log_softmax(logits[i].double(), -1)[tokens[i]]
        assert abs(float(logprobs[i]) - float(raw)) < 1e-4  # raw logprob of the sampled token


def test_seeded_rows_do_not_depend_on_the_batch():
    p = SamplingParams(temperature=1.0, seed=1234, top_p=0.95)
    others = [SamplingParams(temperature=0.7, top_k=5), SamplingParams(temperature=0.0), SamplingParams(min_p=0.1)]
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(5))
    draws_alone, draws_batch = [], []
    ga, gb = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1234)
    for _ in range(20):
        alone = SamplingBatch.build([p], [ga], V, "cpu", seqs=[fake_seq([1], [])])
        draws_alone.append(int(Sampler()(logits[:1], alone)[0][0]))
        batch = SamplingBatch.build(others + [p], [None, None, None, gb], V, "cpu",
                                    seqs=[fake_seq([1], [])] * 4)
        draws_batch.append(int(Sampler()(torch.cat([logits[1:], logits[:1]]), batch)[0][3]))
    assert draws_alone == draws_batch
    assert len(set(draws_alone)) > 1


def test_sampled_token_rank_and_top_logprobs_match_a_full_count():
    """Ranks of sampled tokens, inside and outside the reported top-k, against counting the vocabulary."""
    B = 64
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(3)) * 2
    logits[::2, 7] += 40.0  # peaked rows: the sampled token is inside the top-k there
    params = [SamplingParams(temperature=2.0, logprobs=2, seed=i) for i in range(B)]
    seqs = [fake_seq([1, 2], []) for _ in range(B)]
    for seq, p in zip(seqs, params):
        seq.params = p
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    batch = SamplingBatch.build(params, gens, V, "cpu", seqs=seqs)
    tokens, logprobs, top = Sampler()(logits, batch)
    outside = 0
    ref = logits.double().log_softmax(-1)
    for i, seq in enumerate(seqs):
        top_ids, top_lps, rank = top[i].top_ids, top[i].top_logprobs, top[i].rank
        tok = int(tokens[i])
        assert top[i].token_id == tok and top[i].logprob == logprobs[i]
        assert rank == int((logits[i] > logits[i, tok]).sum()) + 1
        assert top_ids == logits[i].topk(2).indices.tolist()
        assert all(abs(lp - float(ref[i, t])) < 1e-4 for t, lp in zip(top_ids, top_lps))
        outside += tok not in top_ids
    assert 0 < outside < B  # both paths of the rank shortcut were taken


@pytest.mark.parametrize("repetition", [1.0, 1.3])
def test_in_place_processing_samples_as_the_clone_and_leaves_raw_logits(repetition, monkeypatch):
    """Penalties on every row plus a logit bias: the sampler works on the logits in place and
    restores them; tokens and logprobs equal the clone path's, the logits end bit-identical."""
    from pagedllm.worker import sampler as sampler_mod

    g = torch.Generator().manual_seed(7)
    params, seqs = [], []
    for i in range(6):
        p = SamplingParams(temperature=0.0 if i % 2 else 0.8, top_k=40, presence_penalty=0.7, frequency_penalty=0.4,
                           repetition_penalty=repetition, logprobs=3, seed=i,
                           logit_bias={int(t): 5.0 for t in torch.randint(0, 60, (3,), generator=g)})
        params.append(p)
        seqs.append(fake_seq(torch.randint(0, V, (9,), generator=g).tolist(),
                             torch.randint(0, 60, (20,), generator=g).tolist()))
        seqs[-1].params = p
    logits = torch.randn(6, V, generator=g) * 3
    raw = logits.clone()

    def run():
        gens = [torch.Generator().manual_seed(100 + i) for i in range(6)]
        batch = SamplingBatch.build(params, gens, V, "cpu", seqs=seqs)
        return Sampler()(logits, batch)  # token ids, logprobs, top-logprob records

    assert sampler_mod.process_logits_in_place(logits.clone(), SamplingBatch.build(
        params, [None] * 6, V, "cpu", seqs=seqs)) is not None  # the in-place path applies here
    in_place = run()
    assert torch.equal(logits, raw)
    monkeypatch.setattr(sampler_mod, "process_logits_in_place", lambda logits, batch: None)
    cloned = run()
    assert in_place[0] == cloned[0] and in_place[1] == cloned[1]
    assert in_place[2] == cloned[2]
