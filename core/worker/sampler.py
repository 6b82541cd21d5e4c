"""Batched sampling over one step: every request's parameters become row tensors.

Order (vLLM v1's): raw logprobs are taken from the model's logits first; then the logits are
processed: allowed-token whitelist, bad words, structured-output mask, ``min_tokens`` (EOS and
stop ids banned), logit bias, repetition/frequency/presence penalties. Greedy rows take the
argmax of the processed logits. Random rows apply temperature, min-p, then top-k and top-p
(``topk`` when every such row has a top-k, one shared sort otherwise), and draw with the
exponential race ``argmax(p / E)``, ``E ~ Exp(1)``; seeded rows draw their noise from their own
generator so their text does not depend on the rest of the batch.

Each step only pays for what some row asks for: every stage runs on the subset of rows that
needs it and is skipped when none does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.sampling_params import SamplingParams, SamplingType
from pagedllm.worker.sampler_output import PromptLogprobs, TokenLogprobs

_NEG_INF = float("-inf")
# Use ``topk`` instead of a full sort for top-k/top-p while every such row has a k below this.
_TOPK_FAST_MAX = 1024


@dataclass(slots=True)
class Penalties:
    """The rows with penalties, their values, and the (row, token) pairs of their history
    (row = position in ``rows``): output tokens (frequency, presence), all tokens (repetition)."""

    rows: torch.Tensor  # [P] batch rows
    presence: torch.Tensor  # [P]
    frequency: torch.Tensor  # [P]
    repetition: torch.Tensor  # [P]
    output_pairs: tuple  # (row [N], token [N]) one per output token
    all_pairs: tuple  # (row [M], token [M]) one per prompt + output token; empty without repetition


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
    # -- logits processing, each None when no row needs it --
    allowed: tuple | None = None  # (rows [A], mask [A, V] bool True = banned)
    banned: tuple | None = None  # (row idx [N], token idx [N]) set to -inf
    bias: tuple | None = None  # (row idx [N], token idx [N], value [N]) added
    penalties: Penalties | None = None
    bitmask: tuple | None = None  # (rows [S], int32 bitmask [S, ceil(V/32)]) from structured output
    logprob_rows: list | None = None  # rows that want top logprobs
    logprob_ks: list | None = None  # how many top logprobs each of those rows wants
    max_logprobs: int = 0
    # Some row needs the sampled token's logprob (logprobs, or best_of ranking); else the
    # full-vocabulary logsumexp is skipped (vLLM also reports no cumulative_logprob then).
    needs_logprob: bool = True

    @classmethod
    def build(cls, params: list[SamplingParams], generators: list, vocab_size: int, device,
              seqs: list | None = None) -> "SamplingBatch":
        greedy = [p.sampling_type is SamplingType.GREEDY for p in params]
        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
        top_k = [p.top_k if p.top_k > 0 else vocab_size for p in params]
        kw = dict(device=device)
        batch = cls(
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
            needs_logprob=any(wants_logprob(p) for p in params),
        )
        if seqs is not None:
            _build_processing(batch, params, seqs, vocab_size, device)
        return batch


def wants_logprob(p: SamplingParams) -> bool:
    """Whether a request reports logprobs or needs them to rank its samples."""
    return p.logprobs is not None or p.best_of is not None


def _build_processing(batch: SamplingBatch, params: list[SamplingParams], seqs: list, V: int, device) -> None:
    """Turn the per-request processing options of this step into a few index tensors.

    One Python pass gathers (row, token[, value]) lists; each list that is not empty then becomes
    one tensor, so a stage no row asks for costs nothing on the device."""
    allowed_rows, allowed_ids = [], []
    ban_r, ban_t, bias_r, bias_t, bias_v = [], [], [], [], []
    pen_rows, out_r, out_t, all_r, all_t = [], [], [], [], []
    so_rows, logprob_rows, logprob_ks = [], [], []
    for i, (p, seq) in enumerate(zip(params, seqs)):
        if p.allowed_token_ids is not None:
            allowed_rows.append(i)
            allowed_ids.append(p.allowed_token_ids)
        banned = _banned_tokens(p, seq)
        ban_r.extend([i] * len(banned))
        ban_t.extend(banned)
        if p.logit_bias:
            bias_r.extend([i] * len(p.logit_bias))
            bias_t.extend(p.logit_bias.keys())
            bias_v.extend(p.logit_bias.values())
        if p.uses_penalties:
            j = len(pen_rows)
            pen_rows.append(i)
            out = seq.output_token_ids
            out_r.extend([j] * len(out))
            out_t.extend(out)
            if p.repetition_penalty != 1.0:
                all_r.extend([j] * seq.num_tokens)
                all_t.extend(seq.token_ids)
        if getattr(seq, "matcher", None) is not None:
            so_rows.append(i)
        if p.logprobs is not None:
            logprob_rows.append(i)
            logprob_ks.append(p.logprobs)
    if allowed_rows:
        batch.allowed = (torch.tensor(allowed_rows, device=device), _allowed_mask(allowed_ids, V).to(device))
    if ban_r:
        batch.banned = (torch.tensor(ban_r, device=device), torch.tensor(ban_t, device=device))
    if bias_r:
        batch.bias = (torch.tensor(bias_r, device=device), torch.tensor(bias_t, device=device),
                      torch.tensor(bias_v, dtype=torch.float32, device=device))
    if pen_rows:
        batch.penalties = _penalties([params[i] for i in pen_rows], pen_rows, (out_r, out_t), (all_r, all_t), device)
    if so_rows:
        from pagedllm.worker.structured_output import fill_bitmask

        batch.bitmask = (torch.tensor(so_rows, device=device),
                         fill_bitmask([seqs[i].matcher for i in so_rows], V).to(device))
    if logprob_rows:
        batch.logprob_rows = logprob_rows
        batch.logprob_ks = logprob_ks
        batch.max_logprobs = max(logprob_ks)


def _banned_tokens(p: SamplingParams, seq) -> list[int]:
    """The tokens one row may not sample this step: its stop and EOS ids while it is short of
    ``min_tokens``, and the last token of every bad word whose other tokens the output ends with."""
    n_out = seq.num_output_tokens
    banned = []
    if n_out < p.min_tokens:
        banned = list(p.stop_token_ids) + ([] if p.ignore_eos else list(seq.eos_token_ids))
    if seq.bad_words_token_ids:
        out = seq.output_token_ids
        for word in seq.bad_words_token_ids:
            k = len(word) - 1
            if k == 0 or (n_out >= k and out[n_out - k:] == word[:-1]):
                banned.append(word[-1])
    return banned


def _allowed_mask(allowed_ids: list, V: int) -> torch.Tensor:
    """[A, V] bool, True where the row's whitelist leaves the token out (built on the CPU in one scatter)."""
    mask = torch.ones(len(allowed_ids), V, dtype=torch.bool)
    r = torch.repeat_interleave(torch.arange(len(allowed_ids)), torch.tensor([len(a) for a in allowed_ids]))
    mask[r, torch.tensor([t for a in allowed_ids for t in a])] = False
    return mask


def _penalties(pp: list[SamplingParams], pen_rows: list, output_pairs: tuple, all_pairs: tuple,
               device) -> Penalties:
    """The penalised rows' three values and their history's (row, token) pairs, as tensors."""
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.long, device=device)
    return Penalties(
        rows=torch.tensor(pen_rows, device=device),
        presence=torch.tensor([p.presence_penalty for p in pp], **f32),
        frequency=torch.tensor([p.frequency_penalty for p in pp], **f32),
        repetition=torch.tensor([p.repetition_penalty for p in pp], **f32),
        output_pairs=tuple(torch.tensor(x, **i64) for x in output_pairs),
        all_pairs=tuple(torch.tensor(x, **i64) for x in all_pairs),
    )


def apply_penalties(logits: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor,
                    repetition: torch.Tensor, out_idx: tuple, all_idx: tuple) -> torch.Tensor:
    """vLLM's formulas: repetition divides positive / multiplies negative logits of every token
    seen in prompt or output; frequency subtracts per output occurrence; presence once.

    Sparse: only the (row, token) pairs of the history are touched, never the whole [R, V].
    Works in place: callers pass a tensor they own (a clone, or an indexed copy)."""
    V = logits.shape[1]
    if all_idx[0].numel():
        key = torch.unique(all_idx[0] * V + all_idx[1])
        r, t = key // V, key % V
        vals = logits[r, t]
        rep = repetition[r]
        logits[r, t] = torch.where(vals > 0, vals / rep, vals * rep)
    if out_idx[0].numel():
        r, t = out_idx
        logits.index_put_((r, t), -frequency[r], accumulate=True)
        key = torch.unique(r * V + t)
        ur = key // V
        logits.index_put_((ur, key % V), -presence[ur], accumulate=True)
    return logits


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p nucleus (one sort)."""
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    return logits.scatter(-1, sorted_idx, _mask_sorted(sorted_logits, top_k, top_p))


def _mask_sorted(sorted_logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Descending-sorted logits -> the same with tokens past top-k / outside top-p at -inf.

    top-p exactly as vLLM computes it: in ascending order, tokens whose cumulative mass is
    <= 1 - p are dropped (the most likely token always stays)."""
    if top_k is not None:
        kth = sorted_logits.gather(1, (top_k - 1).clamp(0, sorted_logits.shape[1] - 1).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, _NEG_INF)
    if top_p is not None:
        cum_asc = sorted_logits.softmax(dim=-1).flip(-1).cumsum(dim=-1)
        remove = (cum_asc <= (1 - top_p).unsqueeze(1)) & (top_p < 1).unsqueeze(1)  # p=1 rows: off
        remove[:, -1] = False
        sorted_logits = sorted_logits.masked_fill(remove.flip(-1), _NEG_INF)
    return sorted_logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, _NEG_INF)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Structured-output bitmask (bit set = allowed, 32 tokens per int32) applied as -inf."""
    V = logits.shape[1]
    bits = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)
    if allowed.shape[1] < V:
        allowed = torch.nn.functional.pad(allowed, (0, V - allowed.shape[1]), value=False)
    return logits.masked_fill(~allowed[:, :V], _NEG_INF)


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Everything that changes the distribution before temperature (a new tensor if anything does)."""
    if batch.allowed is None and batch.banned is None and batch.bias is None and batch.penalties is None \
            and batch.bitmask is None:
        return logits
    x = logits.clone()
    if batch.allowed is not None:
        rows, mask = batch.allowed
        x[rows] = x[rows].masked_fill(mask, _NEG_INF)
    if batch.banned is not None:
        x[batch.banned] = _NEG_INF
    if batch.bitmask is not None:
        rows, bitmask = batch.bitmask
        x[rows] = apply_bitmask(x[rows], bitmask)
    _apply_bias_and_penalties(x, batch)
    return x


def _apply_bias_and_penalties(x: torch.Tensor, batch: SamplingBatch) -> None:
    """The sparse changes, in place on x: logit bias, then penalties."""
    if batch.bias is not None:
        r, t, v = batch.bias
        x.index_put_((r, t), v, accumulate=True)
    pen = batch.penalties
    if pen is not None:
        args = (pen.presence, pen.frequency, pen.repetition, pen.output_pairs, pen.all_pairs)
        if pen.rows.numel() == x.shape[0]:  # every row (rows are in order): no gather/scatter copies
            apply_penalties(x, *args)
        else:
            x[pen.rows] = apply_penalties(x[pen.rows], *args)


def process_logits_in_place(logits: torch.Tensor, batch: SamplingBatch):
    """``process_logits`` done on ``logits`` itself when only sparse changes apply (logit bias,
    penalties on every row): the [B, V] clone is the larger cost at big batches. Returns a
    function that puts the raw values of the touched (row, token) pairs back (the logprobs are
    read from the raw logits after sampling), or None when it does not apply (nothing changed)."""
    if batch.allowed is not None or batch.banned is not None or batch.bitmask is not None:
        return None
    penalties = batch.penalties
    every_row = penalties is None or penalties.rows.numel() == logits.shape[0]  # then pen rows == rows
    if (batch.bias is None and penalties is None) or not every_row:
        return None
    touched = []  # every pair the changes below write, with its raw value
    if batch.bias is not None:
        r, t, _ = batch.bias
        touched.append((r, t, logits[r, t]))
    if penalties is not None:
        for r, t in (penalties.output_pairs, penalties.all_pairs):
            touched.append((r, t, logits[r, t]))
    _apply_bias_and_penalties(logits, batch)

    def restore() -> None:
        for r, t, raw in touched:
            logits[r, t] = raw
    return restore


def row_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, -1)`` for [B, V] in one exp pass: max + log(sum(exp(x - max))), the
    formula torch uses too, about twice as fast on CPU (torch's kernel makes more passes)."""
    m = x.amax(dim=-1)
    if not bool(torch.isfinite(m).all()):  # rows of -inf / inf / nan: torch's special cases
        return torch.logsumexp(x, dim=-1)
    return (x - m.unsqueeze(1)).exp_().sum(dim=-1).log_().add_(m)


_ARGMAX_CHUNK = 1024


def fast_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(-1)`` for [B, V], same indices (first maximum) but several times faster on CPU.

    torch's CPU argmax over a vocabulary-wide row is a scalar loop; ``amax`` is vectorised. So:
    the max of each 1024-wide chunk, the first chunk holding the row max, then argmax inside it.
    """
    B, V = x.shape
    n = V // _ARGMAX_CHUNK
    if x.device.type != "cpu" or n < 2:
        return x.argmax(dim=-1)
    chunks = x[:, :n * _ARGMAX_CHUNK].view(B, n, _ARGMAX_CHUNK)
    chunk_max = chunks.amax(dim=-1)  # [B, n]
    best = chunk_max.argmax(dim=-1)  # the first chunk that holds the maximum
    idx = best * _ARGMAX_CHUNK + chunks[torch.arange(B, device=x.device), best].argmax(dim=-1)
    if n * _ARGMAX_CHUNK < V:  # the tail only wins when strictly larger (it comes last)
        tail_max, tail_idx = x[:, n * _ARGMAX_CHUNK:].max(dim=-1)
        idx = torch.where(tail_max > chunk_max.gather(1, best.unsqueeze(1)).squeeze(1),
                          n * _ARGMAX_CHUNK + tail_idx, idx)
    return idx


_TOPK_CHUNK = 64


def fast_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` for [B, V] on CPU with a small k: the same values, sorted; among equal
    values at the k-th place the indices may differ (as torch leaves unspecified). Several times
    faster: torch's CPU topk walks every row element by element, so first each 64-wide chunk's
    max (one vectorised pass); the k chunks with the largest maxima hold a top k (every element
    above the k-th value lies in a chunk whose max is above it, and fewer than k chunks can have
    that), then topk over those k * 64 candidates (and the tail)."""
    B, V = x.shape
    n = V // _TOPK_CHUNK
    if x.device.type != "cpu" or n < 4 * k:
        return x.topk(k, dim=-1)
    chunks = x[:, :n * _TOPK_CHUNK].view(B, n, _TOPK_CHUNK)
    best = chunks.amax(dim=-1).topk(k, dim=-1).indices  # [B, k]
    cand = chunks.gather(1, best.unsqueeze(-1).expand(B, k, _TOPK_CHUNK)).view(B, -1)
    cand_idx = (best.unsqueeze(-1) * _TOPK_CHUNK + torch.arange(_TOPK_CHUNK)).view(B, -1)
    if n * _TOPK_CHUNK < V:
        cand = torch.cat((cand, x[:, n * _TOPK_CHUNK:]), dim=1)
        cand_idx = torch.cat((cand_idx, torch.arange(n * _TOPK_CHUNK, V).expand(B, -1)), dim=1)
    vals, pos = cand.topk(k, dim=-1)
    return vals, cand_idx.gather(1, pos)


class Sampler:
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> tuple[list, list | None, list | None]:
        """logits: [B, V] float32 -> (token ids, raw logprob of each sampled token or None, top logprobs).

        Results leave as Python lists (sampled ids and logprobs reach the host here), so the
        runner can return them without touching a sequence. Top logprobs: per row, a
        ``TokenLogprobs`` (rank and top ids/logprobs in the raw distribution, as vLLM reports
        them) for the rows that asked for ``logprobs``, None for the others; None when none asked.
        """
        restore = process_logits_in_place(logits, batch)
        x = logits if restore is not None else process_logits(logits, batch)
        if batch.all_greedy:
            tokens = fast_argmax(x)
        else:
            random_rows = (~batch.greedy).nonzero().squeeze(1)
            if random_rows.numel() == x.shape[0]:
                tokens = self._sample_random(x, batch, random_rows)
            else:
                tokens = fast_argmax(x)
                tokens[random_rows] = self._sample_random(x, batch, random_rows)
        if restore is not None:
            restore()
        if not batch.needs_logprob:
            return tokens.tolist(), None, None
        raw_logprob_norm = row_logsumexp(logits)
        logprobs = logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - raw_logprob_norm
        top = self._top_logprobs(logits, raw_logprob_norm, tokens, batch) if batch.logprob_rows else None
        token_ids, logprobs = tokens.tolist(), logprobs.tolist()
        if top is None:
            return token_ids, logprobs, None
        top_ids, top_lps, ranks = top
        records = [None] * len(token_ids)
        for j, (row, k) in enumerate(zip(batch.logprob_rows, batch.logprob_ks)):
            records[row] = TokenLogprobs(token_ids[row], logprobs[row], ranks[j],
                                         top_ids[j][:k] if top_ids else [], top_lps[j][:k] if top_lps else [])
        return token_ids, logprobs, records

    @staticmethod
    def _sample_random(x: torch.Tensor, batch: SamplingBatch, rows: torch.Tensor) -> torch.Tensor:
        """Exponential-race draw for the random rows. Rows with a small top-k sample among their
        ``topk`` candidates only (noise for k tokens, not V); the others over the full vocabulary.
        Which path a row takes depends only on its own parameters, and a seeded row draws exactly
        k (or V) numbers from its generator, so its text does not depend on the batch."""
        V = x.shape[1]
        k_all = batch.top_k[rows]
        fast = k_all < min(V, _TOPK_FAST_MAX)
        out = torch.empty(rows.numel(), dtype=torch.long, device=x.device)
        for use_fast in (True, False):
            mask = fast if use_fast else ~fast
            if not bool(mask.any()):
                continue
            sub = rows[mask]
            k = k_all[mask]
            xr = x if sub.numel() == x.shape[0] else x[sub]
            temperature = batch.temperature[sub].unsqueeze(1)
            top_p = batch.top_p[sub] if batch.any_top_p else None
            if use_fast and not batch.any_min_p:
                # temperature (> 0) keeps the order: the top k first, then k values divided, not V
                vals, idx = fast_topk(xr, int(k.max()))
                xr = _mask_sorted(vals / temperature, k, top_p)
            else:
                xr = xr / temperature
                if batch.any_min_p:
                    xr = apply_min_p(xr, batch.min_p[sub])
                if use_fast:
                    vals, idx = fast_topk(xr, int(k.max()))
                    xr = _mask_sorted(vals, k, top_p)
                elif top_p is not None or bool((k < V).any()):
                    xr = apply_top_k_top_p(xr, k if bool((k < V).any()) else None, top_p)
            probs = xr.softmax(dim=-1)
            noise = torch.empty_like(probs).exponential_()
            for j, r in enumerate(sub.tolist()):
                gen = batch.generators[r]
                if gen is not None:
                    width = int(k[j]) if use_fast else V
                    noise[j, :width].exponential_(generator=gen)
            choice = fast_argmax(probs / noise)
            out[mask] = idx.gather(1, choice.unsqueeze(1)).squeeze(1) if use_fast else choice
        return out

    @staticmethod
    def _top_logprobs(logits, norm, tokens, batch: SamplingBatch) -> tuple[list, list, list]:
        """(top ids, top logprobs, rank of the sampled token) of the logprob rows, as lists."""
        rows = torch.tensor(batch.logprob_rows, device=logits.device)
        raw = logits if rows.numel() == logits.shape[0] else logits[rows]
        chosen = tokens[rows].unsqueeze(1)
        chosen_logit = raw.gather(1, chosen)
        k = batch.max_logprobs
        if k:
            top_vals, top_ids = fast_topk(raw, k)
            # A sampled token inside the top-k has every larger logit in the top-k too: rank it
            # there, and count over the whole vocabulary only for the rows where it is not.
            ranks = (top_vals > chosen_logit).sum(dim=1) + 1
            outside = (~(top_ids == chosen).any(dim=1)).nonzero().squeeze(1)
            if outside.numel():
                ranks[outside] = (raw[outside] > chosen_logit[outside]).sum(dim=1) + 1
            top_vals = top_vals - norm[rows].unsqueeze(1)
            return top_ids.tolist(), top_vals.tolist(), ranks.tolist()
        ranks = (raw > chosen_logit).sum(dim=1) + 1
        return [], [], ranks.tolist()


@torch.inference_mode()
def compute_prompt_logprobs(compute_logits, hidden: torch.Tensor, ordered: list, seq_indices: list[int],
                            last_idx: torch.Tensor) -> list[PromptLogprobs]:
    """For sequences that want ``prompt_logprobs``: the raw logprob, rank and top-k of every prompt
    token this step's chunk predicts, one ``PromptLogprobs`` per chunk (``seq_indices[i]`` names
    ``ordered[i]`` in the step's scheduled list).

    Position ``p``'s logits predict token ``p + 1``; the first prompt token has none.
    """
    last = last_idx.tolist()
    chunks = []
    for i, s in enumerate(ordered):
        seq = s.seq
        k = seq.params.prompt_logprobs
        if k is None:
            continue
        start = seq.num_computed_tokens  # first position of this chunk (absolute)
        P = seq.num_prompt_tokens
        n = min(s.num_new_tokens, P - 1 - start)  # positions whose next token is a prompt token
        if n <= 0:
            continue
        first_row = last[i] - s.num_new_tokens + 1
        logits = compute_logits(hidden[first_row:first_row + n]).float()
        lp = logits.log_softmax(dim=-1)
        targets = torch.tensor(seq.token_ids[start + 1:start + 1 + n], device=lp.device)
        chosen = lp.gather(1, targets.unsqueeze(1)).squeeze(1)
        ranks = ((lp > chosen.unsqueeze(1)).sum(dim=1) + 1).tolist()
        if k:
            top_vals, top_ids = lp.topk(k, dim=-1)
            top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
        entries = [TokenLogprobs(t, c, r, top_ids[j] if k else [], top_vals[j] if k else [])
                   for j, (t, c, r) in enumerate(zip(targets.tolist(), chosen.tolist(), ranks))]
        chunks.append(PromptLogprobs(seq_indices[i], start + 1, entries))
    return chunks
