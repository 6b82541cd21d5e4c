"""The vLLM sampling and engine fields that LangChain's ``VLLM`` and LlamaIndex's ``Vllm`` both carry.

Both wrappers copy vLLM's ``LLM`` arguments under the same names and defaults
(``langchain_community.llms.VLLM``, ``llama_index.llms.vllm.Vllm``), so one mixin holds them and
turns them into ``SamplingParams`` keywords and engine arguments the same way. The embedding
adapters (``VLLMEmbeddings``, ``VllmEmbedding``) sample nothing: they take the engine half only.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pagedllm.names import reject_unknown_fields


class VllmEngineFields(BaseModel):
    """Mixin (pydantic): the engine fields, how they become engine arguments, and no unknown arguments."""

    # the docstrings below become the fields' descriptions (JSON schema, LlamaIndex's component docs)
    model_config = ConfigDict(use_attribute_docstrings=True)

    tensor_parallel_size: int | None = 1
    """Engine: number of tensor-parallel workers (None means 1)."""
    trust_remote_code: bool | None = False
    """Engine: allow model families whose Hugging Face code lives in the model's repository."""
    dtype: str = "auto"
    """Engine: weight and activation dtype ("auto", "float32", "bfloat16", "float16")."""
    download_dir: str | None = None
    """Engine: where hub downloads go (default: the Hugging Face cache)."""
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Engine: further engine arguments under vLLM's names (``max_model_len``, ``kv_cache_memory``, ...);
    they win over the fields above."""

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_arguments(cls, data: Any) -> Any:
        """``VLLM(max_new_token=8)`` is a TypeError naming ``max_new_tokens``, never a silent 512."""
        return reject_unknown_fields(cls, data, f"{cls.__name__} argument")

    def _engine_kwargs(self) -> dict[str, Any]:
        """Engine arguments for the in-process provider: the engine fields, ``vllm_kwargs`` over them."""
        fields = dict(tensor_parallel_size=self.tensor_parallel_size or 1,
                      trust_remote_code=bool(self.trust_remote_code), dtype=self.dtype,
                      download_dir=self.download_dir)
        return fields | self.vllm_kwargs


class VllmFields(VllmEngineFields):
    """Mixin (pydantic): the engine fields and the sampling ones, and how they become sampling parameters."""

    n: int = 1
    """Sampling: generations returned per prompt."""
    best_of: int | None = None
    """Sampling: generations sampled per prompt, the ``n`` most likely kept (None means ``n``)."""
    presence_penalty: float = 0.0
    """Sampling: subtracted once from the logit of every token already generated."""
    frequency_penalty: float = 0.0
    """Sampling: subtracted from a token's logit for each time it was generated."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling: softmax temperature; 0 is greedy."""
    top_p: float = 1.0
    """Sampling: nucleus sampling, the smallest set of tokens whose probabilities reach ``top_p``."""
    top_k: int = -1
    """Sampling: only the ``top_k`` most likely tokens (-1: all)."""
    stop: list[str] | None = None
    """Sampling: strings that end a generation (not included in the text)."""
    ignore_eos: bool = False
    """Sampling: keep generating after the end-of-sequence token."""
    max_new_tokens: int = 512
    """Sampling: most tokens generated per output (vLLM's ``max_tokens``)."""
    logprobs: int | None = None
    """Sampling: log-probabilities of this many most likely tokens per generated token."""
    lora_request: Any = None
    """LoRA adapter for every call (a ``LoRARequest``, or an adapter name the engine or server has loaded;
    the engine needs ``vllm_kwargs={"enable_lora": True}``); a call's ``lora_request=`` keyword wins."""

    def _sampling_fields(self) -> dict[str, Any]:
        """The sampling fields as ``SamplingParams`` keywords."""
        return {"n": self.n, "best_of": self.best_of, "temperature": self.temperature,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "top_p": self.top_p, "top_k": self.top_k, "stop": self.stop, "ignore_eos": self.ignore_eos,
                "max_tokens": self.max_new_tokens, "logprobs": self.logprobs}

    def _pop_lora(self, kwargs: dict):
        """The call's ``lora_request`` keyword (taken out of ``kwargs``), else the field's."""
        return pop_lora_request(kwargs, self.lora_request)


def pop_lora_request(kwargs: dict, default=None):
    """Take ``lora_request`` out of a call's keywords (the rest become sampling parameters); LangChain's vLLM
    integration passes it the same way. A ``LoRARequest``, an adapter name, or None (the base model)."""
    from pagedllm.lora.request import LoRARequest

    lora = kwargs.pop("lora_request", default)
    if lora is not None and not isinstance(lora, (LoRARequest, str)):
        raise TypeError(f"lora_request must be a LoRARequest or an adapter name, got {type(lora).__name__}")
    return lora
