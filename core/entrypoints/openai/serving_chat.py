"""``POST /v1/chat/completions``: render the chat template, generate, answer JSON or SSE deltas."""
from __future__ import annotations

from collections.abc import AsyncIterator

from pagedllm.entrypoints.openai.logprobs import chat_logprobs
from pagedllm.entrypoints.openai.protocol import (APIError, ChatChoice, ChatCompletionChunk,
                                                  ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
                                                  ChatMessage, ChatResponseMessage, ChatStreamChoice,
                                                  build_sampling_params, random_id, structured_outputs_for)
from pagedllm.entrypoints.openai.serving_engine import (DONE, OpenAIServing, check_capacity, engine_error, sse,
                                                        sse_error, stream_options, usage)
from pagedllm.tokenizer import render_chat


class ServingChat(OpenAIServing):
    def __init__(self, engine, served_model_names, chat_template: str | None = None):
        super().__init__(engine, served_model_names)
        self.chat_template = chat_template

    def render(self, messages: list[ChatMessage], *, chat_template: str | None = None,
               add_generation_prompt: bool = True, continue_final_message: bool = False,
               chat_template_kwargs: dict | None = None) -> list[int]:
        """Messages -> prompt token ids through the model's (or the given) chat template."""
        conversation = [_as_template_message(i, m) for i, m in enumerate(messages)]
        try:
            text = render_chat(self.tokenizer, conversation, chat_template=chat_template or self.chat_template,
                               add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, **(chat_template_kwargs or {}))
        except Exception as exc:  # template errors (jinja raise_exception, bad kwargs) are the caller's
            raise APIError(f"cannot render the chat template: {exc}", param="messages") from exc
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prepare(self, req: ChatCompletionRequest):
        model = self.model_name(req.model)
        if req.tools or req.functions:
            raise APIError("tool calling is not supported yet by this server (`tools`/`functions`)",
                           param="tools", code="unsupported_parameter")
        if isinstance(req.tool_choice, dict) or req.tool_choice not in (None, "none", "auto"):
            raise APIError("tool calling is not supported yet by this server (`tool_choice`)",
                           param="tool_choice", code="unsupported_parameter")
        if req.echo:
            raise APIError("`echo` is not supported for chat completions", param="echo",
                           code="unsupported_parameter")
        ids = self.render(req.messages, chat_template=req.chat_template,
                          add_generation_prompt=req.add_generation_prompt is not False,
                          continue_final_message=bool(req.continue_final_message),
                          chat_template_kwargs=req.chat_template_kwargs)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        fit = self.check_prompt(ids, requested, "messages")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise APIError("top_logprobs needs logprobs=true", param="top_logprobs")
        params = build_sampling_params(req, self.default_sampling_params, max_tokens=fit, logprobs=logprobs,
                                       structured_outputs=structured_outputs_for(req))
        return model, ids, params

    async def create(self, req: ChatCompletionRequest):
        model, ids, params = self.prepare(req)
        request_id = random_id("chatcmpl")
        include_usage, continuous = stream_options(req)
        check_capacity(self.engine)
        if req.stream:
            return self._stream(model, request_id, ids, params, include_usage, continuous)
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
        choices = [ChatChoice(index=i, message=ChatResponseMessage(content=t), finish_reason=finish.get(i),
                              stop_reason=stop.get(i),
                              logprobs=None if k is None else {"content": chat_logprobs(steps[i], k, self.tokenizer)})
                   for i, t in enumerate(texts)]
        return ChatCompletionResponse(id=request_id, model=model, choices=choices,
                                      usage=usage(len(ids), completion_tokens))

    async def _stream(self, model, request_id, ids, params, include_usage, continuous) -> AsyncIterator[str]:
        completion_tokens = 0

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
                    if c.text or c.finish_reason is not None:
                        delta = ChatDelta(content=c.text) if c.text else ChatDelta()
                        logprobs = None
                        if params.logprobs is not None and c.logprobs:
                            logprobs = {"content": chat_logprobs(c.logprobs, params.logprobs, self.tokenizer)}
                        yield chunk([ChatStreamChoice(index=c.index, delta=delta, finish_reason=c.finish_reason,
                                                      stop_reason=c.stop_reason, logprobs=logprobs)], continuous)
            if include_usage:
                yield chunk([], with_usage=True)
        except Exception as exc:  # accepted requests end with an error event, never silently
            yield sse_error(exc)
        yield DONE


def _as_template_message(i: int, m: ChatMessage) -> dict:
    """A validated message as the dict chat templates expect (text parts joined)."""
    if m.role == "tool" or m.tool_calls:
        raise APIError(f"messages[{i}]: tool messages are not supported yet (tool calling)",
                       param=f"messages[{i}].role", code="unsupported_parameter")
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
    return message
