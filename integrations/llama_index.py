"""LlamaIndex adapter: ``Vllm``, an ``LLM`` over a pagedllm Provider.

Same fields as ``llama_index.llms.vllm.Vllm`` (changing the import is the migration), but its
``metadata`` comes from the engine, every method streams for real (sync and async), and instruct
models are prompted through their chat template by default. ``api_url`` points it at a server.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Sequence

from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                              CompletionResponse, CompletionResponseAsyncGen,
                                              CompletionResponseGen, LLMMetadata, MessageRole)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import LLM

from pagedllm.integrations.llama_index_common import llama_index_provider
from pagedllm.integrations.vllm_fields import VllmFields
from pagedllm.provider import Completion, Provider
from pagedllm.sampling_params import SamplingParams


def _completion(text: str, delta: str) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta)


def _chat(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def _responses(deltas, make: Callable[[str, str], Any]):
    """Provider deltas (an iterator, or an async one) -> ``make(text so far, new text)`` per non-empty
    delta, as LlamaIndex's stream methods return: one loop for the four of them."""
    text = ""

    def step(delta: str):
        nonlocal text
        text += delta
        return make(text, delta)

    if hasattr(deltas, "__aiter__"):
        return (step(d.text) async for d in deltas if d.text)
    return (step(d.text) for d in deltas if d.text)


class Vllm(VllmFields, LLM):
    """``Settings.llm = Vllm(model="HuggingFaceTB/SmolLM2-135M-Instruct")``; the sampling and engine
    fields are ``VllmFields``, shared with LangChain's ``VLLM``."""

    model: str = "facebook/opt-125m"
    """Model name (hub id, bundled name, local folder or .gguf file); on a server, the served name."""
    api_url: str = ""
    """An OpenAI-compatible server (``http://host:8000`` or ``.../v1``) instead of the in-process engine."""
    api_key: str | None = None
    """The server's API key (with ``api_url``; default: ``$OPENAI_API_KEY``, as the OpenAI clients read it)."""
    use_chat_template: bool | None = None
    """Prompt ``complete()`` through the chat template (None: when the model has one)."""

    _provider: Provider | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "pagedllm_Vllm"

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = llama_index_provider(self.model, self.api_url, self.api_key, self._engine_kwargs())
        return self._provider

    @property
    def metadata(self) -> LLMMetadata:
        info = self.provider.info
        return LLMMetadata(context_window=info.context_window or 3900, num_output=self.max_new_tokens,
                           model_name=info.name, is_chat_model=info.is_chat_model)

    def _params(self, kwargs: dict) -> SamplingParams:
        return SamplingParams.from_optional(**(self._sampling_fields() | kwargs))

    def _prompt(self, prompt: str, formatted: bool):
        """A chat request for instruct models (their template), else the raw prompt."""
        use_template = self.use_chat_template
        if use_template is None:
            use_template = self.provider.info.is_chat_model
        if use_template and not formatted:
            return [{"role": "user", "content": prompt}]
        return prompt

    @staticmethod
    def _messages(messages: Sequence[ChatMessage]) -> list[dict]:
        return [{"role": m.role.value, "content": m.content or ""} for m in messages]

    @staticmethod
    def _raw(result: Completion) -> dict:
        return {"finish_reason": result.finish_reasons[0], "usage": {
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens}}

    # ---- completion -------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        lora = self._pop_lora(kwargs)
        result = self.provider.generate(self._prompt(prompt, formatted), self._params(kwargs), lora_request=lora)
        return CompletionResponse(text=result.texts[0], raw=self._raw(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        lora = self._pop_lora(kwargs)
        return _responses(self.provider.stream(self._prompt(prompt, formatted), self._params(kwargs),
                                              lora_request=lora), _completion)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        lora = self._pop_lora(kwargs)
        result = await self.provider.agenerate(self._prompt(prompt, formatted), self._params(kwargs),
                                               lora_request=lora)
        return CompletionResponse(text=result.texts[0], raw=self._raw(result))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any
                               ) -> CompletionResponseAsyncGen:
        lora = self._pop_lora(kwargs)
        return _responses(self.provider.astream(self._prompt(prompt, formatted), self._params(kwargs),
                                               lora_request=lora), _completion)

    # ---- chat -------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        lora = self._pop_lora(kwargs)
        result = self.provider.generate(self._messages(messages), self._params(kwargs), lora_request=lora)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=result.texts[0]),
                            raw=self._raw(result))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        lora = self._pop_lora(kwargs)
        return _responses(self.provider.stream(self._messages(messages), self._params(kwargs), lora_request=lora),
                          _chat)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        lora = self._pop_lora(kwargs)
        result = await self.provider.agenerate(self._messages(messages), self._params(kwargs), lora_request=lora)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=result.texts[0]),
                            raw=self._raw(result))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        lora = self._pop_lora(kwargs)
        return _responses(self.provider.astream(self._messages(messages), self._params(kwargs), lora_request=lora),
                          _chat)
