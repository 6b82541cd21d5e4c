"""LangChain ``VLLM``: a completion LLM (``BaseLLM``) over a pagedllm Provider.

It keeps the fields and defaults of ``langchain_community.llms.VLLM``, so migrating is an import
change. It runs on the shared in-process engine (concurrent calls batch together), or on an
OpenAI-compatible server when ``base_url`` is given.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import PrivateAttr, SecretStr

from pagedllm.integrations.langchain_common import _provider, _usage_dict
from pagedllm.integrations.vllm_fields import VllmFields
from pagedllm.provider import Completion, Provider, Usage
from pagedllm.sampling_params import SamplingParams


class VLLM(VllmFields, BaseLLM):
    """A completion LLM on pagedllm: ``VLLM(model="HuggingFaceTB/SmolLM2-135M-Instruct")``.

    Fields and defaults are ``langchain_community.llms.VLLM``'s (the sampling and engine ones in
    ``VllmFields``, shared with LlamaIndex's ``Vllm``); ``base_url``/``api_key`` select a remote
    OpenAI-compatible server instead of the in-process engine.
    """

    model: str = ""
    """Model name (hub id, bundled name, local folder or .gguf file); on a server, the served name."""
    use_beam_search: bool = False
    """Kept from langchain_community's VLLM; True is refused (beam search runs through ``LLM.generate``)."""
    client: Any = None
    """Unused: langchain_community's handle on its ``vllm.LLM``, kept so saved configs still load."""
    base_url: str | None = None
    """An OpenAI-compatible server (``http://host:8000/v1``) instead of the in-process engine."""
    api_key: SecretStr | None = None
    """The server's API key (with ``base_url``)."""

    _provider_cache: Provider | None = PrivateAttr(default=None)

    @property
    def provider(self) -> Provider:
        return _provider(self, self.model, self._engine_kwargs())

    @property
    def _llm_type(self) -> str:
        return "pagedllm"

    @property
    def _default_params(self) -> dict[str, Any]:
        return self._sampling_fields() | {"use_beam_search": self.use_beam_search}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "base_url": self.base_url, **self._default_params}

    def _params(self, stop: list[str] | None, kwargs: dict) -> SamplingParams:
        """Field values, overridden per call by ``stop`` and vLLM-named keyword arguments."""
        fields = self._default_params | kwargs
        if stop is not None:
            fields["stop"] = stop
        return SamplingParams.from_optional(**fields)

    def _result(self, completions: list[Completion]) -> LLMResult:
        generations, total = [], Usage()
        for c in completions:
            usage = _usage_dict(c.usage)
            generations.append([Generation(text=t, generation_info={"finish_reason": r, "token_usage": usage})
                                for t, r in zip(c.texts, c.finish_reasons)])
            total.prompt_tokens += c.usage.prompt_tokens
            total.completion_tokens += c.usage.completion_tokens
        return LLMResult(generations=generations,
                         llm_output={"token_usage": _usage_dict(total), "model_name": self.provider.info.name})

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        lora = self._pop_lora(kwargs)
        params, provider = self._params(stop, kwargs), self.provider
        if len(prompts) == 1:
            return self._result([provider.generate(prompts[0], params, lora_request=lora)])
        # One thread per prompt so every request is in the engine at once (one batch).
        with ThreadPoolExecutor(len(prompts)) as pool:
            return self._result(list(pool.map(lambda p: provider.generate(p, params, lora_request=lora), prompts)))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        lora = self._pop_lora(kwargs)
        params, provider = self._params(stop, kwargs), self.provider
        return self._result(await asyncio.gather(*(provider.agenerate(p, params, lora_request=lora)
                                                   for p in prompts)))

    def _chunk(self, delta) -> GenerationChunk:
        info = {}
        if delta.finish_reason is not None:
            info["finish_reason"] = delta.finish_reason
        if delta.usage is not None:
            info["token_usage"] = _usage_dict(delta.usage)
        return GenerationChunk(text=delta.text, generation_info=info or None)

    def _stream_params(self, stop, kwargs) -> SamplingParams:
        params = self._params(stop, kwargs)
        if params.n > 1:
            raise ValueError(f"n={params.n}: a stream carries one generation; use invoke/generate for several")
        return params

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        lora = self._pop_lora(kwargs)
        for delta in self.provider.stream(prompt, self._stream_params(stop, kwargs), lora_request=lora):
            chunk = self._chunk(delta)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        lora = self._pop_lora(kwargs)
        async for delta in self.provider.astream(prompt, self._stream_params(stop, kwargs), lora_request=lora):
            chunk = self._chunk(delta)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
