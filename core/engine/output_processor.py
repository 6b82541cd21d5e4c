"""From sampled tokens to what the caller sees (vLLM's OutputProcessor, nano-vllm's postprocess).

Incremental detokenizing, the stop rules (EOS / stop ids, stop strings, a finished grammar, the
length limit), logprob records to ``{token_id: Logprob}`` dicts, and ``RequestOutput`` building
(cumulative, delta or final-only; ``n`` / ``best_of`` groups). The engine appends the token and
frees blocks; this decides when a sequence has finished and what text it shows.
"""
from __future__ import annotations

from pagedllm.engine.sequence import Sequence
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import RequestOutputKind
from pagedllm.worker.sampler import wants_logprob
from pagedllm.worker.sampler_output import PromptLogprobs, TokenLogprobs


class OutputProcessor:
    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._token_text: dict[int, str] = {}  # token id -> its text, for logprob dicts

    # ---- per step ----------------------------------------------------------------------
    @staticmethod
    def add_prompt_logprobs(scheduled: list, chunks: list[PromptLogprobs]) -> None:
        """Store each chunk's records at their prompt positions (a recomputed chunk overwrites)."""
        for chunk in chunks:
            seq = scheduled[chunk.seq_index].seq
            store = seq.prompt_logprobs
            if store is None:
                store = seq.prompt_logprobs = [None] * seq.num_prompt_tokens
            store[chunk.first_position:chunk.first_position + len(chunk.entries)] = chunk.entries

    def process_token(self, seq: Sequence, token: int) -> None:
        """After ``token`` was appended: detokenize the delta, apply the stop rules, and give a
        finished sequence that was not detokenized incrementally its text."""
        delta = seq.detok.step(seq.token_ids) if seq.detok is not None else ""
        seq.text += delta
        self._check_stop(seq, token, len(delta))
        if seq.finish_reason is not None and seq.detok is None and seq.params.detokenize:
            ids = seq.output_token_ids
            if self._drops_stop_token(seq):
                ids = ids[:-1]
            seq.text = self.tokenizer.decode(ids, skip_special_tokens=seq.params.skip_special_tokens)

    def make_outputs(self, advanced: dict[int, Sequence]) -> list[RequestOutput]:
        """One RequestOutput per request with a sequence in ``advanced`` (id -> sequence), if it has news."""
        outputs = []
        reported = set()
        for seq in advanced.values():
            head = seq if seq.group is None else seq.group.seqs[0]
            if id(head) in reported:
                continue
            reported.add(id(head))
            out = self.make_output(head, advanced)
            if out is not None:
                outputs.append(out)
        return outputs

    # ---- stop rules ----------------------------------------------------------------------
    @staticmethod
    def _drops_stop_token(seq: Sequence) -> bool:
        """A stop token (EOS or stop_token_ids) adds no text unless include_stop_str_in_output."""
        p = seq.params
        if seq.finish_reason != "stop" or isinstance(seq.stop_reason, str) or p.include_stop_str_in_output:
            return False
        last = seq.token_ids[-1]
        return last in p.stop_token_ids or (not p.ignore_eos and last in seq.eos_token_ids)

    def _check_stop(self, seq: Sequence, token: int, delta_len: int = 0) -> None:
        p = seq.params
        n_out = seq.num_output_tokens
        if n_out >= p.min_tokens:
            stop = None
            if not p.ignore_eos and token in seq.eos_token_ids:
                stop = (None,)
            elif token in p.stop_token_ids:
                stop = (token,)
            if stop is not None:
                seq.finish_reason, seq.stop_reason = "stop", stop[0]
                if seq.detok is not None and not p.include_stop_str_in_output and delta_len:
                    seq.text = seq.text[:len(seq.text) - delta_len]
                return
            if p.stop and delta_len and self._find_stop_string(seq, delta_len):
                return
            if seq.matcher is not None and seq.matcher.is_stopped():
                seq.finish_reason = "stop"  # the grammar is complete
                return
        if n_out >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"

    @staticmethod
    def _find_stop_string(seq: Sequence, delta_len: int) -> bool:
        """Search the text that the new delta could complete (stop strings span tokens)."""
        p = seq.params
        text = seq.text
        start = max(0, len(text) - delta_len - max(len(s) for s in p.stop) + 1)
        best = None
        for stop in p.stop:
            i = text.find(stop, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, stop)
        if best is None:
            return False
        i, stop = best
        seq.text = text[:i + len(stop)] if p.include_stop_str_in_output else text[:i]
        seq.finish_reason, seq.stop_reason = "stop", stop
        return True

    # ---- RequestOutput -------------------------------------------------------------------
    @staticmethod
    def _visible_text(seq: Sequence) -> str:
        """Text that may be shown now: a possible stop string's start is held back until decided."""
        p = seq.params
        if seq.is_finished or not p.stop or p.include_stop_str_in_output:
            return seq.text
        hold = max(len(s) for s in p.stop) - 1
        return seq.text[:max(seq.emitted_len, len(seq.text) - hold)]

    def _decoded(self, token_id: int) -> str | None:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _logprob_dict(self, entry: TokenLogprobs, detokenize: bool) -> dict:
        dec = self._decoded if detokenize else (lambda t: None)
        out = {entry.token_id: Logprob(entry.logprob, entry.rank, dec(entry.token_id))}
        for r, (t, lp) in enumerate(zip(entry.top_ids, entry.top_logprobs), start=1):
            if t not in out:
                out[t] = Logprob(lp, r, dec(t))
        return out

    def _completion(self, seq: Sequence, delta: bool) -> CompletionOutput:
        p = seq.params
        visible = self._visible_text(seq)
        if delta:
            text, token_ids = visible[seq.emitted_len:], seq.token_ids[-1:]
            entries = seq.logprobs[-1:] if seq.logprobs is not None else None
        else:
            text, token_ids = visible, seq.output_token_ids
            entries = seq.logprobs
        seq.emitted_len = len(visible)
        logprobs = None if entries is None else [self._logprob_dict(e, p.detokenize) for e in entries]
        return CompletionOutput(index=seq.index, text=text, token_ids=token_ids,
                                cumulative_logprob=seq.cumulative_logprob if wants_logprob(p) else None,
                                logprobs=logprobs,
                                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason)

    def make_output(self, seq: Sequence, advanced: dict | None = None) -> RequestOutput | None:
        """The RequestOutput of ``seq``'s request (all samples of a group), or None if nothing to say yet."""
        p = seq.params
        group = seq.group
        finished = seq.is_finished if group is None else group.is_finished
        kind = p.output_kind
        if not finished and (kind is RequestOutputKind.FINAL_ONLY
                             or (group is not None and group.num_samples > p.n)):
            return None  # best_of > n: which n are returned is known only at the end
        members = [seq] if group is None else (group.returned() if finished else group.seqs)
        delta = kind is RequestOutputKind.DELTA
        if delta and advanced is not None:
            members = [m for m in members if id(m) in advanced]
        completions = [self._completion(m, delta) for m in members]
        if finished and group is not None:
            for i, c in enumerate(completions):
                c.index = i if group.num_samples > p.n else c.index
        prompt_logprobs = None
        if seq.prompt_logprobs is not None and (not delta or seq.num_output_tokens == 1 or finished):
            prompt_logprobs = [None] + [self._logprob_dict(e, p.detokenize) if e is not None else None
                                        for e in seq.prompt_logprobs[1:]]
        return RequestOutput(request_id=seq.request_id, prompt=seq.prompt,
                             prompt_token_ids=seq.token_ids[:seq.num_prompt_tokens],
                             prompt_logprobs=prompt_logprobs, outputs=completions, finished=finished,
                             metrics=seq.metrics, num_cached_tokens=seq.num_cached_tokens,
                             lora_request=seq.lora_request)
