"""Beam search driven over the engine, one token per step for every live beam.

Each step submits every running beam as a one-token request asking for its top
``2 * beam_width`` raw logprobs; prefix caching lets the beams share (and reuse across steps)
their full KV blocks, so a step recomputes at most one partial block per beam. The selection
follows Hugging Face transformers' ``generate(num_beams=..., do_sample=False)`` exactly:
candidates are the top ``2 * width`` continuations of all beams; those among the first
``width`` that end (EOS or the length limit) become hypotheses scored
``sum(logprobs) / generated_len ** length_penalty``; the rest continue; the search stops when
no running beam can beat the worst of ``width`` kept hypotheses (``early_stopping``: True stops
as soon as ``width`` hypotheses exist, "never" assumes the longest possible length).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams


@dataclass
class BeamSearchSequence:
    """One hypothesis: ``tokens`` are prompt + generated ids (vLLM's shape)."""

    tokens: list[int]
    logprobs: list[float]
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    score: float = 0.0  # length-penalised score used for ranking


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence] = field(default_factory=list)


@dataclass
class _Search:
    prompt_ids: list[int]
    running: list  # (generated ids, per-token logprobs, cumulative logprob)
    finished: list = field(default_factory=list)  # (score, generated ids, logprobs, cum, reason)
    improvable: bool = True
    done: bool = False


def beam_search(llm, prompts: list, params: BeamSearchParams, eos_token_ids) -> list[BeamSearchOutput]:
    engine = llm.llm_engine
    width, lp_pow = params.beam_width, params.length_penalty
    eos = set() if params.ignore_eos else set(eos_token_ids)
    keep = max(2, 1 + len(eos)) * width  # candidates per step, as transformers keeps
    searches = []
    for prompt in prompts:
        _, ids = engine.tokenize_prompt(prompt)
        searches.append(_Search(list(ids), [([], [], 0.0)]))
    step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=keep, detokenize=False, ignore_eos=True,
                                 output_kind=RequestOutputKind.FINAL_ONLY)
    for step in range(1, params.max_tokens + 1):
        live = [s for s in searches if not s.done]
        if not live:
            break
        batch = [(s, b) for s in live for b in s.running]
        outs = llm._run([s.prompt_ids + b[0] for s, b in batch], [step_params] * len(batch), False)
        cands: dict[int, list] = {}
        for (s, (toks, lps, cum)), out in zip(batch, outs):
            entry = out.outputs[0].logprobs[0]
            for tok, lp in entry.items():
                cands.setdefault(id(s), []).append((cum + lp.logprob, toks, lps, tok, lp.logprob))
        for s in live:
            _advance(s, sorted(cands[id(s)], key=lambda c: -c[0])[:keep], step, params, eos, width, lp_pow)
    tokenizer = engine.tokenizer
    results = []
    for s in searches:
        ranked = sorted(s.finished, key=lambda f: -f[0])
        seqs = [BeamSearchSequence(tokens=s.prompt_ids + toks, logprobs=lps, cum_logprob=cum,
                                   text=tokenizer.decode(toks, skip_special_tokens=True), finish_reason=reason,
                                   score=score)
                for score, toks, lps, cum, reason in ranked]
        results.append(BeamSearchOutput(seqs))
    return results


def _advance(s: _Search, cands: list, step: int, params: BeamSearchParams, eos: set, width: int,
             lp_pow: float) -> None:
    """One transformers beam-search step for one prompt, from its sorted top candidates."""
    at_limit = step >= params.max_tokens
    hits = [at_limit or c[3] in eos for c in cands]
    full_and_stop = len(s.finished) >= width and params.early_stopping is True
    if s.improvable and not full_and_stop:
        for c, hit in list(zip(cands, hits))[:width]:
            if hit:
                score, toks, lps, tok, lp = c
                reason = "stop" if tok in eos else "length"
                s.finished.append((score / step ** lp_pow, toks + [tok], lps + [lp], score, reason))
        s.finished = sorted(s.finished, key=lambda f: -f[0])[:width]
    s.running = [(toks + [tok], lps + [lp], score) for (score, toks, lps, tok, lp), hit in zip(cands, hits)
                 if not hit][:width]
    if s.improvable and len(s.finished) >= width and s.running:
        length = params.max_tokens if params.early_stopping == "never" and lp_pow > 0 else step
        best_possible = s.running[0][2] / length ** lp_pow
        s.improvable = best_possible > min(f[0] for f in s.finished)
    all_full = len(s.finished) >= width and params.early_stopping is True
    s.done = not s.improvable or all_full or not s.running or at_limit
