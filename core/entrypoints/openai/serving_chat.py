"""``POST /v1/chat/completions``: render the chat template, generate, answer JSON or SSE deltas; tool calls
are read out of the answer (``tool_use.py`` decides how) and returned in OpenAI's ``tool_calls`` shape."""
from __future__ import annotations

from collections.abc import AsyncIterator

from pagedllm.entrypoints.openai.logprobs import chat_logprobs
from pagedllm.entrypoints.openai.protocol import (APIError, ChatChoice, ChatCompletionChunk,
                                                  ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
                                                  ChatMessage, ChatResponseMessage, ChatStreamChoice, FunctionCall,
                                                  ToolCall, build_sampling_params, random_id, structured_outputs_for)
from pagedllm.entrypoints.openai.serving_engine import (DONE, OpenAIServing, check_capacity, engine_error, sse,
                                                        sse_error, stream_options, usage)
from pagedllm.entrypoints.openai.tool_use import ToolUse, tool_use
from pagedllm.tokenizer import render_chat
from pagedllm.tool_parsers import ToolCallStream, ToolParser, get_tool_parser
from pagedllm.tool_parsers.ids import new_call_id


class ServingChat(OpenAIServing):
    def __init__(self, engine, served_model_names, chat_template: str | None = None,
                 tool_call_parser: str | None = None):
        """``tool_call_parser``: the parser ``tool_choice="auto"`` answers are read with (vLLM's
        ``--enable-auto-tool-choice --tool-call-parser NAME``); None refuses ``auto``."""
        super().__init__(engine, served_model_names)
        self.chat_template = chat_template
        self.auto_tool_parser: type[ToolParser] | None = (get_tool_parser(tool_call_parser) if tool_call_parser
                                                          else None)

    def render(self, messages: list[ChatMessage], *, chat_template: str | None = None,
               add_generation_prompt: bool = True, continue_final_message: bool = False,
               chat_template_kwargs: dict | None = None, tools: list[dict] | None = None) -> list[int]:
        """Messages (and tools) -> prompt token ids through the model's (or the given) chat template."""
        template = chat_template or self.chat_template
        conversation = [_as_template_message(i, m) for i, m in enumerate(messages)]
        try:
            text = render_chat(self.tokenizer, conversation, chat_template=template, tools=tools,
                               add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, **(chat_template_kwargs or {}))
        except Exception as exc:  # template errors (jinja raise_exception, bad kwargs) are the caller's
            raise APIError(f"cannot render the chat template: {exc}", param="messages") from exc
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prepare(self, req: ChatCompletionRequest):
        model = self.model_name(req.model)
        tools = tool_use(req, self.tokenizer, self.auto_tool_parser)
        if req.echo:
            raise APIError("`echo` is not supported for chat completions", param="echo",
                           code="unsupported_parameter")
        ids = self.render(req.messages, chat_template=req.chat_template,
                          add_generation_prompt=req.add_generation_prompt is not False,
                          continue_final_message=bool(req.continue_final_message),
                          chat_template_kwargs=req.chat_template_kwargs, tools=tools.tools)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        fit = self.check_prompt(ids, requested, "messages")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise APIError("top_logprobs needs logprobs=true", param="top_logprobs")
        params = build_sampling_params(req, self.default_sampling_params, max_tokens=fit, logprobs=logprobs,
                                       structured_outputs=tools.structured_outputs or structured_outputs_for(req))
        return model, ids, params, tools

    async def create(self, req: ChatCompletionRequest):
        model, ids, params, tools = self.prepare(req)
        request_id = random_id("chatcmpl")
        include_usage, continuous = stream_options(req)
        check_capacity(self.engine)
        if req.stream:
            return self._stream(model, request_id, ids, params, tools, include_usage, continuous)
        texts, finish, stop, completion_tokens = [""] * params.n, {}, {}, 0
        steps = [[] for _ in range(params.n)]
        try:
            async for _, out in self.generate_all([ids], [params], request_id, model):
                for c in out.outputs:
                    texts[c.index] += c.text
                    steps[c.index] += c.logprobs or []
                    completion_tokens += len(c.token_ids)
                    if c.finish_reason is not None:
                        finish[c.index], stop[c.index] = c.finish_reason, c.stop_reason
        except Exception as exc:
            raise engine_error(exc) from exc
        k = params.logprobs
        choices = []
        for i, text in enumerate(texts):
            message, reason = _answer(text, finish.get(i), tools)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reason, stop_reason=stop.get(i),
                                      logprobs=None if k is None
                                      else {"content": chat_logprobs(steps[i], k, self.tokenizer)}))
        return ChatCompletionResponse(id=request_id, model=model, choices=choices,
                                      usage=usage(len(ids), completion_tokens))

    async def _stream(self, model, request_id, ids, params, tools: ToolUse, include_usage,
                      continuous) -> AsyncIterator[str]:
        completion_tokens = 0
        streams = [ToolCallStream(tools.parser) if tools.parser else None for _ in range(params.n)]

        def chunk(choices, with_usage=False) -> str:
            body = ChatCompletionChunk(id=request_id, model=model, choices=choices)
            if with_usage:
                body.usage = usage(len(ids), completion_tokens)
            return sse(body.model_dump_json())

        try:
            for i in range(params.n):  # the first chunk of each choice carries the role, as OpenAI's
                yield chunk([ChatStreamChoice(index=i, delta=ChatDelta(role="assistant", content=""))], continuous)
            async for _, out in self.generate_all([ids], [params], request_id, model):
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    delta, reason = _delta(streams[c.index], c.text, c.finish_reason, tools)
                    if delta.content or delta.tool_calls or reason is not None:
                        logprobs = None
                        if params.logprobs is not None and c.logprobs:
                            logprobs = {"content": chat_logprobs(c.logprobs, params.logprobs, self.tokenizer)}
                        yield chunk([ChatStreamChoice(index=c.index, delta=delta, finish_reason=reason,
                                                      stop_reason=c.stop_reason, logprobs=logprobs)], continuous)
            if include_usage:
                yield chunk([], with_usage=True)
        except Exception as exc:  # accepted requests end with an error event, never silently
            yield sse_error(exc)
        yield DONE


def _answer(text: str, finish_reason: str | None, tools: ToolUse) -> tuple[ChatResponseMessage, str | None]:
    """A finished choice's message: its tool calls when the parser finds any, else its text."""
    if tools.parser is None:
        return ChatResponseMessage(content=text), finish_reason
    parsed = tools.parser.extract_tool_calls(text)
    calls = [ToolCall(id=new_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
             for c in tools.keep(parsed.calls)]
    if not calls:
        return ChatResponseMessage(content=text), finish_reason
    message = ChatResponseMessage(content=parsed.content or None, tool_calls=calls)
    return message, tools.finish_reason(True, finish_reason)


def _delta(stream: ToolCallStream | None, text: str, finish_reason: str | None,
           tools: ToolUse) -> tuple[ChatDelta, str | None]:
    """One step of a choice as a delta: content, and with a parser the new tool-call fragments."""
    if stream is None:
        return (ChatDelta(content=text) if text else ChatDelta()), finish_reason
    content, calls = stream.feed(text, final=finish_reason is not None)
    calls = [c for c in calls if tools.keeps_fragment(c)]
    delta = ChatDelta(content=content or None, tool_calls=calls or None)
    return delta, tools.finish_reason(stream.called, finish_reason)


def _as_template_message(i: int, m: ChatMessage) -> dict:
    """A validated message as the dict chat templates expect (text parts joined, calls as OpenAI dicts)."""
    content = m.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(f"messages[{i}].content[{j}]: only text parts are supported "
                               f"(got type {part.get('type')!r})", param=f"messages[{i}].content")
            texts.append(part["text"])
        content = "".join(texts)
    message = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
    if m.name:
        message["name"] = m.name
    if m.tool_calls:
        if m.role != "assistant":
            raise APIError(f"messages[{i}]: only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")
        message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message
