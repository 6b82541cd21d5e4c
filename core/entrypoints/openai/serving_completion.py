"""``POST /v1/completions``: one engine request per prompt (x ``n`` choices), JSON or SSE."""
from __future__ import annotations

from collections.abc import AsyncIterator

from pagedllm.entrypoints.openai.logprobs import completion_logprobs
from pagedllm.entrypoints.openai.protocol import (APIError, CompletionChoice, CompletionRequest,
                                                  CompletionResponse, build_sampling_params, random_id,
                                                  structured_outputs_for)
from pagedllm.entrypoints.openai.serving_engine import (DONE, OpenAIServing, check_capacity, engine_error, sse,
                                                        sse_error, stream_options, usage)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions API


class ServingCompletion(OpenAIServing):
    def prepare(self, req: CompletionRequest):
        """Validate everything before any engine work: a bad request costs nothing."""
        model = self.model_name(req.model)
        if req.suffix:
            raise APIError("`suffix` is not supported", param="suffix", code="unsupported_parameter")
        prompts = self._tokenize(req)
        max_tokens = req.max_tokens
        if max_tokens is None and "max_tokens" not in self.default_sampling_params:
            max_tokens = DEFAULT_MAX_TOKENS
        params = []
        for ids in prompts:
            fit = self.check_prompt(ids, max_tokens, "prompt")
            params.append(build_sampling_params(req, self.default_sampling_params, max_tokens=fit,
                                                logprobs=req.logprobs,
                                                structured_outputs=structured_outputs_for(req)))
        return model, prompts, params

    def _tokenize(self, req: CompletionRequest) -> list[list[int]]:
        p = req.prompt
        add_special = req.add_special_tokens is not False
        if isinstance(p, str):
            return [self.tokenizer.encode(p, add_special_tokens=add_special)]
        if not p:
            raise APIError("prompt must not be empty", param="prompt")
        if isinstance(p[0], int):
            return [list(p)]
        if isinstance(p[0], str):
            return [self.tokenizer.encode(s, add_special_tokens=add_special) for s in p]
        return [list(ids) for ids in p]

    async def create(self, req: CompletionRequest):
        model, prompts, params = self.prepare(req)
        request_id = random_id("cmpl")
        n = params[0].n
        echo = [self.tokenizer.decode(ids) if req.echo else "" for ids in prompts]
        include_usage, continuous = stream_options(req)
        check_capacity(self.engine)
        if req.stream:
            return self._stream(model, request_id, prompts, params, echo, n, include_usage, continuous, req.logprobs)
        texts = {i * n + k: echo[i] for i in range(len(prompts)) for k in range(n)}
        steps = {idx: [] for idx in texts}
        finish, stop, completion_tokens = {}, {}, 0
        try:
            async for i, out in self.generate_all(prompts, params, request_id, model):
                for c in out.outputs:
                    idx = i * n + c.index
                    texts[idx] += c.text
                    steps[idx] += c.logprobs or []
                    completion_tokens += len(c.token_ids)
                    if c.finish_reason is not None:
                        finish[idx], stop[idx] = c.finish_reason, c.stop_reason
        except Exception as exc:
            raise engine_error(exc) from exc
        k = req.logprobs
        choices = [CompletionChoice(
            index=idx, text=texts[idx], finish_reason=finish.get(idx), stop_reason=stop.get(idx),
            logprobs=None if k is None else completion_logprobs(steps[idx], k, self.tokenizer, len(echo[idx // n])))
            for idx in sorted(texts)]
        return CompletionResponse(id=request_id, model=model, choices=choices,
                                  usage=usage(sum(map(len, prompts)), completion_tokens))

    async def _stream(self, model, request_id, prompts, params, echo, n, include_usage, continuous, k
                      ) -> AsyncIterator[str]:
        prompt_tokens = sum(map(len, prompts))
        completion_tokens = 0
        offsets = {i * n + j: len(echo[i]) for i in range(len(prompts)) for j in range(n)}

        def chunk(idx, text, finish=None, stop_reason=None, steps=None) -> str:
            logprobs = None
            if k is not None and steps:
                logprobs = completion_logprobs(steps, k, self.tokenizer, offsets[idx])
                offsets[idx] += len(text)
            body = CompletionResponse(id=request_id, model=model, choices=[CompletionChoice(
                index=idx, text=text, finish_reason=finish, stop_reason=stop_reason, logprobs=logprobs)])
            if continuous:
                body.usage = usage(prompt_tokens, completion_tokens)
            return sse(body.model_dump_json())

        try:
            for i, text in enumerate(echo):
                if text:
                    for k in range(n):
                        yield chunk(i * n + k, text)
            async for i, out in self.generate_all(prompts, params, request_id, model):
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    if c.text or c.finish_reason is not None:
                        yield chunk(i * n + c.index, c.text, c.finish_reason, c.stop_reason, c.logprobs)
            if include_usage:
                body = CompletionResponse(id=request_id, model=model, choices=[],
                                          usage=usage(prompt_tokens, completion_tokens))
                yield sse(body.model_dump_json())
        except Exception as exc:  # accepted requests end with an error event, never silently
            yield sse_error(exc)
        yield DONE
