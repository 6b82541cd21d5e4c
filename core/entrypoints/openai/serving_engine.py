"""What the completion and chat handlers share: model check, prompt checks, fan-in, SSE framing."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from pagedllm.engine.async_engine import AsyncEngine, EngineDeadError, EngineOverloadedError
from pagedllm.engine.llm_engine import ContextWindowError, fit_context
from pagedllm.entrypoints.openai.protocol import APIError, SamplingFields, UsageInfo
from pagedllm.entrypoints.openai.serving_models import ServingModels
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

DONE = "data: [DONE]\n\n"


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, served_model_names: list[str]):
        self.engine = engine
        self.served_model_names = served_model_names
        self.models = ServingModels(engine, served_model_names)  # build_app shares one among handlers
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.engine.hf_config.vocab_size
        # The model's generation_config defaults, for the fields a request leaves unset (vLLM's way).
        self.default_sampling_params = dict(engine.engine.default_sampling_params)
        self.request_timeout: float | None = None  # seconds a request may generate (serve --request-timeout)

    def model_name(self, requested: str | None) -> str:
        """The name answered in responses; an unknown requested name is a 404 (as OpenAI/vLLM)."""
        if self.models.is_served(requested):
            return requested or self.served_model_names[0]
        raise APIError(f"The model `{requested}` does not exist. Served: {self.models.names()}",
                       status_code=404, type="NotFoundError", param="model", code="model_not_found")

    def check_prompt(self, token_ids: list[int], max_tokens: int | None, param: str) -> int:
        """Validate one tokenized prompt; return the max_tokens that fits the context."""
        n = len(token_ids)
        if n == 0:
            raise APIError("the prompt is empty", param=param)
        bad = next((t for t in token_ids if t >= self.vocab_size), None)
        if bad is not None:
            raise APIError(f"token id {bad} is out of vocabulary (0..{self.vocab_size - 1})", param=param)
        strict = max_tokens is not None  # unset: the room left, or less if generation_config sets max_new_tokens
        if not strict:
            max_tokens = self.default_sampling_params.get("max_tokens")
        try:  # the same rule, and words, as LLM.generate offline
            return fit_context(n, max_tokens, self.max_model_len, strict=strict)
        except ContextWindowError as exc:
            raise APIError(str(exc), param=param if exc.param == "prompt" else exc.param) from None

    async def generate_all(self, prompts: list, params: list, request_id: str, model: str | None = None
                           ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Run every prompt (token ids, or a text for the engine to tokenize) as its own engine request;
        yield ``(prompt_index, output)`` as they come. ``model``: the name the client chose; a LoRA
        adapter's name runs the prompts under it.

        Leaving early aborts every request still running (their generators' finalizers do it).
        """
        lora = self.models.lora_request(model)
        deadline = None if self.request_timeout is None else asyncio.get_running_loop().time() + self.request_timeout
        gens = [self.engine.generate({"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt, p,
                                     f"{request_id}-{i}", lora_request=lora)
                for i, (prompt, p) in enumerate(zip(prompts, params))]
        if len(gens) == 1:
            try:
                while True:
                    try:
                        out = await self._before(deadline, gens[0].__anext__())
                    except StopAsyncIteration:
                        return
                    yield 0, out
            finally:
                await gens[0].aclose()
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, gen):
            try:
                async for out in gen:
                    await queue.put((i, out, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                await queue.put((i, None, exc))
                return
            await queue.put((i, None, None))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
        try:
            remaining = len(tasks)
            while remaining:
                i, out, exc = await self._before(deadline, queue.get())
                if exc is not None:
                    raise exc
                if out is None:
                    remaining -= 1
                    continue
                yield i, out
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for g in gens:
                await g.aclose()


    async def _before(self, deadline: float | None, awaitable):
        """``await awaitable``, or a 408 once the request's ``--request-timeout`` is over (leaving the engine
        generator, which aborts its request and frees its blocks)."""
        if deadline is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            raise APIError(f"the request ran longer than --request-timeout ({self.request_timeout:g} s); it was "
                           "stopped (ask for fewer tokens, or retry when the server is less busy)", status_code=408,
                           type="RequestTimeoutError", code="request_timeout") from None


def check_capacity(engine: AsyncEngine) -> None:
    """A 503 with ``Retry-After`` when ``max_waiting_requests`` requests already wait (before any engine work).

    Called after the request is validated (a bad request is a 400 under load too) and before the
    engine sees it, streaming or not, so a refused request costs nothing and harms none accepted.
    """
    try:
        engine.check_capacity()
    except EngineOverloadedError as exc:
        raise engine_error(exc) from None


def usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


def engine_error(exc: BaseException) -> APIError:
    """An exception raised while generating, as the error the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(str(exc))
    if isinstance(exc, EngineOverloadedError):
        return APIError(str(exc), status_code=503, type="ServiceUnavailableError", code="overloaded",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, EngineDeadError):
        return APIError(str(exc), status_code=503, type="ServiceUnavailableError")
    return APIError(f"internal error: {type(exc).__name__}: {exc}", status_code=500, type="InternalServerError")


def sse_error(exc: BaseException) -> str:
    return sse(json.dumps(engine_error(exc).body()))


def stream_options(req: SamplingFields) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats); stream_options without stream is a 400 (as OpenAI)."""
    opts = req.stream_options
    if opts is None:
        return False, False
    if not req.stream:
        raise APIError("stream_options is only allowed when stream is true", param="stream_options")
    return bool(opts.include_usage), bool(opts.continuous_usage_stats)
