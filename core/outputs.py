"""What a request returns: vLLM's RequestOutput / CompletionOutput shapes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Logprob:
    """One token's log probability in the model's raw distribution, its rank (1 = most likely)
    and its text; ``CompletionOutput.logprobs`` holds one ``{token_id: Logprob}`` dict per token."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


SampleLogprobs = list  # list[dict[int, Logprob]]
PromptLogprobs = list  # list[dict[int, Logprob] | None], first entry None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None = None  # list[dict[int, Logprob]], one per generated token
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    lora_request: object = field(default=None, repr=False)  # the LoRARequest it ran under (None: the base model)


@dataclass
class PoolingOutput:
    """A pooling model's vector for one input (vLLM's ``PoolingOutput.data``)."""

    data: "torch.Tensor"


@dataclass
class PoolingRequestOutput:
    """What ``LLM.encode`` returns per input, and what the engine emits for a pooling request."""

    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: list[int]
    finished: bool
    prompt: str | None = None


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """What ``LLM.embed`` returns per input: ``.outputs.embedding`` is a list of floats (vLLM's shape)."""

    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    finished: bool
    prompt: str | None = None

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        return cls(out.request_id, EmbeddingOutput(out.outputs.data.tolist()), out.prompt_token_ids,
                   out.finished, out.prompt)
