"""Engine logprobs (one ``{token_id: Logprob}`` dict per token) in OpenAI's two response shapes."""
from __future__ import annotations


def _token(lp, token_id: int, tokenizer) -> str:
    return lp.decoded_token if lp.decoded_token is not None else tokenizer.decode([token_id])


def chat_logprobs(steps: list[dict], k: int, tokenizer) -> list[dict]:
    """Chat: ``{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}``'s list part."""
    content = []
    for step in steps:
        token_id, lp = next(iter(step.items()))  # the sampled token comes first
        text = _token(lp, token_id, tokenizer)
        top = [{"token": t, "logprob": max(x.logprob, -9999.0), "bytes": list(t.encode("utf-8"))}
               for x, t in ((x, _token(x, tid, tokenizer)) for tid, x in _by_rank(step, k))]
        content.append({"token": text, "logprob": max(lp.logprob, -9999.0), "bytes": list(text.encode("utf-8")),
                        "top_logprobs": top})
    return content


def _by_rank(step: dict, k: int) -> list[tuple[int, object]]:
    """The ``k`` most likely ``(token_id, Logprob)`` of one step, best first (the sampled one may be outside)."""
    ranked = sorted(((tid, lp) for tid, lp in step.items() if lp.rank is not None), key=lambda p: p[1].rank)
    return ranked[:k]


def completion_logprobs(steps: list[dict], k: int, tokenizer, text_offset: int) -> dict:
    """Completions: parallel lists ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for step in steps:
        token_id, lp = next(iter(step.items()))
        text = _token(lp, token_id, tokenizer)
        out["tokens"].append(text)
        out["token_logprobs"].append(max(lp.logprob, -9999.0))
        top = {_token(x, tid, tokenizer): max(x.logprob, -9999.0) for tid, x in _by_rank(step, k)}
        top.setdefault(text, max(lp.logprob, -9999.0))
        out["top_logprobs"].append(top)
        out["text_offset"].append(text_offset)
        text_offset += len(text)
    return out
