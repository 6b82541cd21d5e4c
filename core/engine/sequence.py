"""A sequence: the tokens of one request and where its KV lives."""
from __future__ import annotations

import enum
import time

from pagedllm.outputs import RequestMetrics
from pagedllm.pooling.params import PoolingParams
from pagedllm.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Prompt + generated token ids, the block table, and the compute frontier.

    ``num_computed_tokens`` counts tokens whose KV is in the cache; everything after it is
    still to be fed to the model (a prompt, the rest of a chunked prefill, or the last
    sampled token).
    """

    __slots__ = (
        "request_id", "prompt", "token_ids", "num_prompt_tokens", "num_computed_tokens",
        "block_table", "block_hashes", "status", "params", "max_tokens", "finish_reason",
        "stop_reason", "cumulative_logprob", "metrics", "num_cached_tokens", "detok", "text",
        # per-request engine state the sampler reads (never on the user's SamplingParams)
        "eos_token_ids", "bad_words_token_ids",
        # generation semantics (engine / output processor): see pagedllm.engine.output_processor
        "logprobs", "prompt_logprobs", "matcher", "group", "index", "emitted_len",
        "lora_request",  # the LoRARequest it runs under (None: the base model)
    )

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams | PoolingParams, max_tokens: int, arrival_time: float | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # hashes of the full blocks, chained
        self.status = SequenceStatus.WAITING
        self.params = params
        self.max_tokens = max_tokens
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.cumulative_logprob = 0.0
        self.metrics = RequestMetrics(arrival_time=arrival_time or time.time())
        self.num_cached_tokens = 0
        self.detok = None  # incremental detokenizer state
        self.text = ""
        self.eos_token_ids: tuple[int, ...] = ()  # the model's EOS ids (the engine's)
        self.bad_words_token_ids: list[list[int]] = []  # params.bad_words as token ids
        self.logprobs: list | None = [] if getattr(params, "logprobs", None) is not None else None  # TokenLogprobs per token
        self.prompt_logprobs: list | None = None  # TokenLogprobs per prompt position, filled during prefill
        self.matcher = None  # structured-output grammar state (llguidance)
        self.group = None  # the SequenceGroup of an n>1 / best_of request
        self.index = 0  # this sample's index in its group
        self.emitted_len = 0  # characters of text already streamed
        self.lora_request = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)}, {self.status.value})")
