"""LangChain ``ChatVLLM``: a chat model (``BaseChatModel``) over a pagedllm Provider, prompted
through the model's chat template; tools and structured output by constrained decoding.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from pagedllm.integrations.langchain_common import _provider, _usage_dict
from pagedllm.integrations.vllm_fields import pop_lora_request
from pagedllm.names import reject_unknown_fields
from pagedllm.provider import Completion, Provider, Usage
from pagedllm.sampling_params import SamplingParams, StructuredOutputsParams
from pagedllm.tool_calling import forced_call_schema, with_system_note
from pagedllm.tool_parsers import ForcedToolParser
from pagedllm.tool_parsers.ids import new_call_id

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _to_dict(message: BaseMessage) -> dict:
    """A LangChain message as the OpenAI-style dict a chat template reads (``tool_calls`` and ``tool_call_id``
    included; ``tokenizer.render_chat`` shows calls to templates without tool support)."""
    role = getattr(message, "role", None) if message.type == "chat" else _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"message type {message.type!r} cannot be sent to a chat template")
    content = message.text if isinstance(message.content, list) else message.content
    out = {"role": role, "content": str(content)}
    calls = getattr(message, "tool_calls", None)
    if calls:
        out["tool_calls"] = [{"id": c.get("id") or new_call_id(), "type": "function",
                              "function": {"name": c["name"], "arguments": json.dumps(c["args"])}} for c in calls]
    if getattr(message, "tool_call_id", None):
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def _tool_choice_name(tool_choice) -> str | None:
    """The function a LangChain ``tool_choice`` names, or None for "auto"/"any"/"required"/None."""
    if isinstance(tool_choice, dict):
        return tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    return None if tool_choice in (None, "auto", "any", "required") else tool_choice


class ChatVLLM(BaseChatModel):
    """A chat model on pagedllm, prompted through the model's chat template.

    ``bind_tools`` and ``with_structured_output`` constrain the output with JSON-schema structured
    outputs: a bound tool is called whenever ``tool_choice`` allows it and the last message is
    not a tool result (small local models cannot be trusted to decide well on their own).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)  # the docstrings below describe the fields

    model: str | None = None
    """Model name (hub id, bundled name, local folder or .gguf file); on a server, the served name."""
    base_url: str | None = None
    """An OpenAI-compatible server (``http://host:8000/v1``) instead of the in-process engine."""
    api_key: SecretStr | None = None
    """The server's API key (with ``base_url``)."""
    temperature: float | None = None
    """Softmax temperature; 0 is greedy (None: the engine's default, 1)."""
    max_tokens: int | None = None
    """Most tokens generated per message (None: ``SamplingParams``' default, 16, as vLLM)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probabilities reach ``top_p``."""
    top_k: int | None = None
    """Only the ``top_k`` most likely tokens (None, 0 or -1: all)."""
    presence_penalty: float | None = None
    """Subtracted once from the logit of every token already generated."""
    frequency_penalty: float | None = None
    """Subtracted from a token's logit for each time it was generated."""
    seed: int | None = None
    """Per-request seed, so sampled outputs repeat."""
    stop: list[str] | None = None
    """Strings that end a message (not included in the text)."""
    timeout: float | None = None
    """Seconds a request to a server may take (with ``base_url``)."""
    max_retries: int = 2
    """Retries of a failed request to a server (with ``base_url``)."""
    streaming: bool = False
    """``invoke`` streams underneath (callbacks see each token)."""
    trust_remote_code: bool = False
    """Engine: allow model families whose Hugging Face code lives in the model's repository."""
    dtype: str = "auto"
    """Engine: weight and activation dtype ("auto", "float32", "bfloat16", "float16")."""
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Engine: further engine arguments under vLLM's names (``max_model_len``, ``kv_cache_memory``, ...)."""
    lora_request: Any = None
    """LoRA adapter for every call (a ``LoRARequest``, or an adapter name the engine or server has loaded;
    the engine needs ``vllm_kwargs={"enable_lora": True}``); a call's ``lora_request=`` keyword wins."""

    _provider_cache: Provider | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_arguments(cls, data: Any) -> Any:
        """``ChatVLLM(max_token=8)`` is a TypeError naming ``max_tokens``, never a silent default."""
        return reject_unknown_fields(cls, data, "ChatVLLM argument")

    @property
    def provider(self) -> Provider:
        kwargs = dict(trust_remote_code=self.trust_remote_code, dtype=self.dtype)
        return _provider(self, self.model, kwargs | self.vllm_kwargs)

    @property
    def _llm_type(self) -> str:
        return "pagedllm-chat"

    @property
    def _default_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "top_k": self.top_k, "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty, "seed": self.seed, "stop": self.stop}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "base_url": self.base_url, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "pagedllm"
        params["ls_model_name"] = kwargs.get("model") or self.model or ""
        params["ls_model_type"] = "chat"
        for key, field in (("ls_temperature", "temperature"), ("ls_max_tokens", "max_tokens")):
            value = kwargs.get(field, getattr(self, field))
            if value is not None:
                params[key] = value
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict):
        """(message dicts, SamplingParams, tools, call-a-tool?) for one call."""
        kwargs = dict(kwargs)
        tools, tool_choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        fields = self._default_params | kwargs
        if stop is not None:
            fields["stop"] = stop
        dicts = [_to_dict(m) for m in messages]
        so = fields.get("structured_outputs")
        if so is not None and so.json is not None:  # the model writes better JSON when it sees the schema
            dicts = with_system_note(dicts, "Answer only with a JSON object that matches this JSON schema:\n"
                                     + json.dumps(so.json))
        call_tool = bool(tools) and tool_choice != "none" and dicts[-1]["role"] != "tool"
        if call_tool:
            fields["structured_outputs"] = StructuredOutputsParams(json=forced_call_schema(tools, _tool_choice_name(tool_choice)),
                                                                   disable_any_whitespace=True,
                                                                   disable_additional_properties=True)
        return dicts, SamplingParams.from_optional(**fields), tools, call_tool

    def _metadata(self, finish_reason: str | None) -> dict:
        return {"model_name": self.provider.info.name, "finish_reason": finish_reason, "model_provider": "pagedllm"}

    def _message(self, text: str, finish_reason, usage: Usage, call_tool: bool) -> AIMessage:
        extra = {}
        if call_tool:
            extra["tool_calls"] = [_parse_tool_call(text)]
            text = ""
        return AIMessage(content=text, usage_metadata=_usage_metadata(usage),
                         response_metadata=self._metadata(finish_reason), **extra)

    def _result(self, completion: Completion, call_tool: bool) -> ChatResult:
        generations = [ChatGeneration(message=self._message(t, r, completion.usage, call_tool),
                                      generation_info={"finish_reason": r})
                       for t, r in zip(completion.texts, completion.finish_reasons)]
        return ChatResult(generations=generations,
                          llm_output={"token_usage": _usage_dict(completion.usage),
                                      "model_name": self.provider.info.name})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            chunks = list(self._stream(messages, stop, run_manager, **kwargs))
            return ChatResult(generations=[_merge(chunks)])
        kwargs = dict(kwargs)
        lora = pop_lora_request(kwargs, self.lora_request)
        dicts, params, tools, call_tool = self._request(messages, stop, kwargs)
        return self._result(self.provider.generate(dicts, params, tools=tools, lora_request=lora), call_tool)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            chunks = [c async for c in self._astream(messages, stop, run_manager, **kwargs)]
            return ChatResult(generations=[_merge(chunks)])
        kwargs = dict(kwargs)
        lora = pop_lora_request(kwargs, self.lora_request)
        dicts, params, tools, call_tool = self._request(messages, stop, kwargs)
        return self._result(await self.provider.agenerate(dicts, params, tools=tools, lora_request=lora), call_tool)

    def _chunks(self, call_tool: bool, state: dict, delta) -> list[ChatGenerationChunk]:
        """Deltas -> chunks: text as it comes, a tool call whole at the end, usage on the last."""
        if delta.finish_reason is not None:
            state["finish_reason"] = delta.finish_reason
        if delta.usage is None:
            if call_tool:
                state["text"] = state.get("text", "") + delta.text
                return []
            return [ChatGenerationChunk(message=AIMessageChunk(content=delta.text))] if delta.text else []
        extra = {}
        if call_tool:
            call = _parse_tool_call(state.get("text", ""))
            extra["tool_call_chunks"] = [{"name": call["name"], "args": json.dumps(call["args"]), "id": call["id"],
                                          "index": 0, "type": "tool_call_chunk"}]
        message = AIMessageChunk(content="", usage_metadata=_usage_metadata(delta.usage), chunk_position="last",
                                 response_metadata=self._metadata(state.get("finish_reason")), **extra)
        return [ChatGenerationChunk(message=message, generation_info={"finish_reason": state.get("finish_reason")})]

    def _stream_request(self, messages, stop, kwargs):
        dicts, params, tools, call_tool = self._request(messages, stop, kwargs)
        if params.n > 1:
            raise ValueError(f"n={params.n}: a stream carries one message; use invoke for several")
        return dicts, params, tools, call_tool

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        kwargs = dict(kwargs)
        lora = pop_lora_request(kwargs, self.lora_request)
        dicts, params, tools, call_tool = self._stream_request(messages, stop, kwargs)
        state: dict = {}
        for delta in self.provider.stream(dicts, params, tools=tools, lora_request=lora):
            for chunk in self._chunks(call_tool, state, delta):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        kwargs = dict(kwargs)
        lora = pop_lora_request(kwargs, self.lora_request)
        dicts, params, tools, call_tool = self._stream_request(messages, stop, kwargs)
        state: dict = {}
        async for delta in self.provider.astream(dicts, params, tools=tools, lora_request=lora):
            for chunk in self._chunks(call_tool, state, delta):
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # ---- tools and structured output --------------------------------------------------------
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | dict | bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI function specs); ``tool_choice``: "auto"/"any"/"required"/"none"/a tool name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is True:
            tool_choice = "any"
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict | type, *, include_raw: bool = False,
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               strict: bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Outputs that parse as ``schema``, enforced token by token (``json_schema``, the default),
        through a forced tool call (``function_calling``) or as any JSON object (``json_mode``).
        Enforcement is always strict, so ``strict`` changes nothing."""
        if kwargs:
            raise ValueError(f"unexpected arguments {sorted(kwargs)}")
        is_model = is_basemodel_subclass(schema)  # pydantic 2 models and pydantic.v1 ones
        ls_format = {"kwargs": {"method": method}, "schema": convert_to_json_schema(schema) if schema else None}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=ls_format)
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_model
                      else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            so = ({"json_object": True} if method == "json_mode"
                  else {"json": convert_to_json_schema(schema), "disable_additional_properties": True})
            llm = self.bind(structured_outputs=StructuredOutputsParams(**so, disable_any_whitespace=True),
                            ls_structured_output_format=ls_format)
            parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        else:
            raise ValueError(f"method={method!r}; choose json_schema, function_calling or json_mode")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")


def _parse_tool_call(text: str) -> dict:
    """The forced call the grammar made the model write, as a LangChain tool call."""
    parsed = ForcedToolParser().extract_tool_calls(text)
    if not parsed.calls:
        raise ValueError(f"the model's output is not a complete tool call: {text[:200]!r}")
    call = parsed.calls[0]
    return {"name": call.name, "args": json.loads(call.arguments), "id": new_call_id(), "type": "tool_call"}


def _usage_metadata(usage: Usage) -> UsageMetadata:
    return UsageMetadata(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                         total_tokens=usage.total_tokens)


def _merge(chunks: list[ChatGenerationChunk]) -> ChatGeneration:
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    message = merged.message
    return ChatGeneration(message=AIMessage(content=message.content, tool_calls=message.tool_calls,
                                            usage_metadata=message.usage_metadata,
                                            response_metadata=message.response_metadata),
                          generation_info=merged.generation_info)
