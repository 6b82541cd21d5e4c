"""What one model-runner step hands back to the driver: plain lists and slotted records.

The runner writes nothing into sequences; everything the engine needs from a step travels in a
``SamplerOutput``, which pickles as it is (a worker in another process can return it).
Rows are named by their index in the step's scheduled list, not by object.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenLogprobs:
    """One position's logprobs in the model's raw distribution: the chosen token, its logprob and
    rank (1 = most likely), and the top ``k`` ids and logprobs the request asked for."""

    token_id: int
    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


@dataclass(slots=True)
class PromptLogprobs:
    """The prompt logprobs one prefill chunk computed: ``entries[j]`` is for prompt position
    ``first_position + j`` (the token that position ``first_position + j - 1`` predicts)."""

    seq_index: int  # in the step's scheduled list
    first_position: int
    entries: list[TokenLogprobs]


@dataclass(slots=True)
class SamplerOutput:
    """One step's result, one entry per sampled row, rows in the order they were sampled."""

    seq_indices: list[int]  # each row's index in the step's scheduled list
    token_ids: list[int]
    # the raw logprob of each sampled token; None when no row reports or ranks by logprobs
    logprobs: list[float] | None = None
    # per row: the record when the request asked for ``logprobs``, else None; None when none did
    top_logprobs: list[TokenLogprobs | None] | None = None
    prompt_logprobs: list[PromptLogprobs] | None = None

    @classmethod
    def empty(cls, prompt_logprobs: list[PromptLogprobs] | None = None) -> "SamplerOutput":
        return cls([], [], prompt_logprobs=prompt_logprobs)
