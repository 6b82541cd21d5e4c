"""Provider: the one small interface every framework adapter talks to.

Adapters (LangChain, LlamaIndex, ...) never touch the engine; they ask a Provider for model
info, for a stream of text deltas, or for embeddings. ``LocalProvider`` runs the in-process engine
(one per engine config per process, so every adapter on one model shares one continuous batch);
``RemoteProvider`` talks to any OpenAI-compatible server, so the same adapters scale out to a
remote ``pagedllm serve`` or vLLM by passing ``base_url``.

A request is either a prompt string (completion) or a list of ``{"role", "content"}`` messages
(chat, rendered through the model's chat template). Sampling options are ``SamplingParams``.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pagedllm.pooling.params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

Request = str | list[dict]


@dataclass(slots=True)
class ModelInfo:
    name: str
    context_window: int | None  # prompt + output tokens; None when a remote server does not say
    max_output_tokens: int | None
    is_chat_model: bool = True


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Delta:
    """New text of choice ``index``; ``finish_reason`` when that choice ends.

    Every stream ends with one delta carrying the request's ``usage`` (its text may be empty).
    """

    text: str
    index: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class Completion:
    """A whole answer: one text and finish reason per choice (``n`` of them)."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: Usage = field(default_factory=Usage)


def collect(deltas, n: int) -> Completion:
    texts, reasons, usage = [""] * n, [None] * n, Usage()
    for d in deltas:
        texts[d.index] += d.text
        if d.finish_reason is not None:
            reasons[d.index] = d.finish_reason
        if d.usage is not None:
            usage = d.usage
    return Completion(texts, reasons, usage)


class Provider(ABC):
    """Model info, chat rendering and generation (sync and async, whole or streamed)."""

    @property
    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def stream(self, request: Request, params: SamplingParams, *, tools: list | None = None,
               lora_request=None) -> Iterator[Delta]:
        """Deltas as they are generated; leaving early cancels the request. ``lora_request``: a
        ``LoRARequest`` or an adapter name (local: one the engine has loaded; remote: a served name)."""

    @abstractmethod
    def astream(self, request: Request, params: SamplingParams, *, tools: list | None = None,
                lora_request=None) -> AsyncIterator[Delta]:
        """``stream`` for asyncio callers; never blocks the event loop."""

    def generate(self, request: Request, params: SamplingParams, *, tools: list | None = None,
                 lora_request=None) -> Completion:
        extra = {} if lora_request is None else {"lora_request": lora_request}  # providers without LoRA
        return collect(self.stream(request, params, tools=tools, **extra), params.n)

    async def agenerate(self, request: Request, params: SamplingParams, *, tools: list | None = None,
                        lora_request=None) -> Completion:
        extra = {} if lora_request is None else {"lora_request": lora_request}
        return collect([d async for d in self.astream(request, params, tools=tools, **extra)], params.n)

    def render_chat(self, messages: list[dict], *, tools: list | None = None) -> str:
        """The prompt text the model sees for ``messages`` (its chat template)."""
        raise NotImplementedError(f"{type(self).__name__} does not render chat templates")

    def embed(self, texts: list[str], *, dimensions: int | None = None,
              truncate_prompt_tokens: int | None = None) -> list[list[float]]:
        """One vector per text, in order, from an embedding (pooling) model. ``dimensions``: keep the first N
        values (Matryoshka models); ``truncate_prompt_tokens``: cut longer texts to N tokens (-1: the model's
        maximum) instead of refusing them."""
        raise NotImplementedError(f"{type(self).__name__} does not make embeddings")

    async def aembed(self, texts: list[str], *, dimensions: int | None = None,
                     truncate_prompt_tokens: int | None = None) -> list[list[float]]:
        """``embed`` for asyncio callers; never blocks the event loop."""
        raise NotImplementedError(f"{type(self).__name__} does not make embeddings")


def check_texts(texts) -> list[str]:
    """``texts`` as a list of strings: a bare string would otherwise be embedded character by character."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return list(texts)


# ---- in-process ------------------------------------------------------------------------------
class LocalProvider(Provider):
    """The in-process engine for ``model`` + engine kwargs (vLLM names), shared process-wide."""

    def __init__(self, model: str, **engine_kwargs):
        from pagedllm.config import EngineConfig
        from pagedllm.engine.async_engine import get_engine

        self.config = EngineConfig.from_kwargs(model=model, **engine_kwargs)
        self.engine = get_engine(self.config)
        names = self.config.served_model_name
        name = (names[0] if isinstance(names, list) else names) or model
        tokenizer = self.engine.tokenizer
        self._info = ModelInfo(name=name, context_window=self.engine.max_model_len,
                               max_output_tokens=self.engine.max_model_len,
                               is_chat_model=bool(getattr(tokenizer, "chat_template", None)))

    @property
    def info(self) -> ModelInfo:
        return self._info

    def render_chat(self, messages: list[dict], *, tools: list | None = None) -> str:
        from pagedllm.tokenizer import render_chat

        return render_chat(self.engine.tokenizer, messages, tools=tools)

    def _prepare(self, request: Request, params: SamplingParams, tools: list | None):
        if isinstance(request, str):
            prompt = request
        else:  # the template holds the special tokens already: do not add BOS twice
            prompt = {"prompt_token_ids": self.engine.tokenizer.encode(
                self.render_chat(request, tools=tools), add_special_tokens=False)}
        params = copy.copy(params)
        best_of_wins = params.best_of is not None and params.best_of > params.n
        params.output_kind = RequestOutputKind.FINAL_ONLY if best_of_wins else RequestOutputKind.DELTA
        return prompt, params

    def _lora(self, lora_request):
        """A LoRARequest, or an adapter name this engine has loaded (e.g. by the server's --lora-modules)."""
        if lora_request is None or not isinstance(lora_request, str):
            return lora_request
        manager = self.engine.engine.lora_manager
        known = [r for r in (manager.list_loras() if manager is not None else []) if r.lora_name == lora_request]
        if not known:
            raise ValueError(f"lora_request={lora_request!r}: no adapter of that name is loaded in this engine; pass "
                             "LoRARequest(name, int_id, path) (with enable_lora=True in the engine arguments)")
        return known[-1]

    def stream(self, request, params, *, tools=None, lora_request=None):
        prompt, params = self._prepare(request, params, tools)
        lora_request = self._lora(lora_request)
        counter = _Counter()
        with contextlib.closing(self.engine.generate_sync(prompt, params, lora_request=lora_request)) as outputs:
            for out in outputs:
                yield from counter.deltas(out)
        yield counter.last()

    async def astream(self, request, params, *, tools=None, lora_request=None):
        prompt, params = self._prepare(request, params, tools)
        lora_request = self._lora(lora_request)
        counter = _Counter()
        outputs = self.engine.generate(prompt, params, lora_request=lora_request)
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                for delta in counter.deltas(out):
                    yield delta
        yield counter.last()

    def embed(self, texts, *, dimensions=None, truncate_prompt_tokens=None):
        # A private loop, not asyncio.run: the caller's thread keeps whatever event loop it had set.
        coro = self.aembed(texts, dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _run_in_new_loop(coro)
        # Sync code called from inside a running loop (a notebook cell): that loop cannot be re-entered.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(_run_in_new_loop, coro).result()

    async def aembed(self, texts, *, dimensions=None, truncate_prompt_tokens=None):
        """Each text is its own engine request, all queued at once, so they share steps (and batch with
        other callers' requests); the first failure aborts the rest."""
        texts = check_texts(texts)
        params = PoolingParams(dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens)
        tasks = [asyncio.ensure_future(self._embed_one(text, params)) for text in texts]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # no-op for finished ones; a cancelled one aborts its engine request
                task.cancel()

    async def _embed_one(self, text: str, params: PoolingParams) -> list[float]:
        output = None
        async for output in self.engine.generate(text, params):
            pass
        return output.outputs.data.float().tolist()


def _run_in_new_loop(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class _Counter:
    """RequestOutputs (delta kind) -> Deltas, counting tokens for the closing usage."""

    __slots__ = ("usage",)

    def __init__(self):
        self.usage = Usage()

    def deltas(self, out) -> list[Delta]:
        self.usage.prompt_tokens = len(out.prompt_token_ids)
        found = []
        for c in out.outputs:
            self.usage.completion_tokens += len(c.token_ids)
            if c.text or c.finish_reason is not None:
                found.append(Delta(c.text, c.index, c.finish_reason))
        return found

    def last(self) -> Delta:
        return Delta("", usage=self.usage)


# ---- over HTTP -------------------------------------------------------------------------------
# SamplingParams fields the OpenAI API names itself; the others travel in ``extra_body`` (vLLM's).
_OPENAI_FIELDS = ("n", "temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "stop")
_EXTRA_FIELDS = ("best_of", "top_k", "min_p", "repetition_penalty", "ignore_eos", "min_tokens", "stop_token_ids",
                 "skip_special_tokens", "include_stop_str_in_output")


def openai_fields(params: SamplingParams) -> dict:
    """``SamplingParams`` as OpenAI create() kwargs (non-default fields only, extras in extra_body)."""
    default = SamplingParams()
    kwargs = {k: getattr(params, k) for k in _OPENAI_FIELDS if getattr(params, k) != getattr(default, k)}
    kwargs["temperature"] = params.temperature  # servers differ in their default: always send it
    extra = {k: getattr(params, k) for k in _EXTRA_FIELDS if getattr(params, k) != getattr(default, k)}
    if params.structured_outputs is not None:
        so = params.structured_outputs
        extra["structured_outputs"] = {k: getattr(so, k) for k in ("json", "regex", "choice", "grammar", "json_object",
                                                                   "disable_any_whitespace", "disable_additional_properties")
                                       if getattr(so, k) not in (None, False)}
    if params.logit_bias:
        kwargs["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
    if params.use_beam_search:
        raise ValueError("use_beam_search is not available through an OpenAI-compatible server")
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class RemoteProvider(Provider):
    """Any OpenAI-compatible server (``pagedllm serve``, vLLM) through the ``openai`` SDK."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, max_retries: int = 2):
        import openai

        # As the OpenAI clients do: the key given, else $OPENAI_API_KEY; "EMPTY" for an open server.
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        options = dict(base_url=base_url, api_key=api_key, max_retries=max_retries)
        if timeout is not None:
            options["timeout"] = timeout
        self.client = openai.OpenAI(**options)
        self.aclient = openai.AsyncOpenAI(**options)
        served = {m.id: m for m in self.client.models.list().data}
        if model is None or model not in served:
            if model is not None and len(served) != 1:
                raise ValueError(f"model {model!r} is not served at {base_url}; it serves {sorted(served)}")
            model = next(iter(served))  # a server with one model answers to that one
        context = getattr(served[model], "max_model_len", None)
        self._info = ModelInfo(name=model, context_window=context, max_output_tokens=context)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _create_kwargs(self, request: Request, params: SamplingParams, tools, lora_request=None):
        model = self._info.name if lora_request is None else getattr(lora_request, "lora_name", lora_request)
        kwargs = openai_fields(params) | {"model": model, "stream": True,
                                          "stream_options": {"include_usage": True}}
        if isinstance(request, str):
            if tools:
                raise ValueError("tools need chat messages, not a plain prompt")
            return "completions", kwargs | {"prompt": request}
        if tools:  # the server shows them to the model as in-process; the caller's grammar (if any) forces a call
            kwargs |= {"tools": tools, "tool_choice": "none"}
        return "chat", kwargs | {"messages": request}

    @staticmethod
    def _deltas(kind: str, chunk) -> list[Delta]:
        if chunk.usage is not None and not chunk.choices:
            return [Delta("", usage=Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))]
        found = []
        for choice in chunk.choices:
            text = choice.text if kind == "completions" else (choice.delta.content or "")
            if text or choice.finish_reason is not None:
                found.append(Delta(text, choice.index, choice.finish_reason))
        return found

    def stream(self, request, params, *, tools=None, lora_request=None):
        kind, kwargs = self._create_kwargs(request, params, tools, lora_request)
        api = self.client.completions if kind == "completions" else self.client.chat.completions
        with contextlib.closing(api.create(**kwargs)) as chunks:
            for chunk in chunks:
                yield from self._deltas(kind, chunk)

    async def astream(self, request, params, *, tools=None, lora_request=None):
        kind, kwargs = self._create_kwargs(request, params, tools, lora_request)
        api = self.aclient.completions if kind == "completions" else self.aclient.chat.completions
        chunks = await api.create(**kwargs)
        try:
            async for chunk in chunks:
                for delta in self._deltas(kind, chunk):
                    yield delta
        finally:
            await chunks.close()

    def _embedding_kwargs(self, texts: list[str], dimensions, truncate_prompt_tokens) -> dict:
        kwargs = {"model": self._info.name, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            kwargs["dimensions"] = dimensions
        if truncate_prompt_tokens is not None:  # vLLM's extension field
            kwargs["extra_body"] = {"truncate_prompt_tokens": truncate_prompt_tokens}
        return kwargs

    @staticmethod
    def _vectors(response) -> list[list[float]]:
        return [d.embedding for d in sorted(response.data, key=lambda d: d.index)]

    def embed(self, texts, *, dimensions=None, truncate_prompt_tokens=None):
        texts = check_texts(texts)
        if not texts:
            return []  # OpenAI refuses an empty input list
        return self._vectors(self.client.embeddings.create(
            **self._embedding_kwargs(texts, dimensions, truncate_prompt_tokens)))

    async def aembed(self, texts, *, dimensions=None, truncate_prompt_tokens=None):
        texts = check_texts(texts)
        if not texts:
            return []
        return self._vectors(await self.aclient.embeddings.create(
            **self._embedding_kwargs(texts, dimensions, truncate_prompt_tokens)))


def get_provider(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, max_retries: int = 2, **engine_kwargs) -> Provider:
    """A RemoteProvider when ``base_url`` is given, else the shared in-process LocalProvider."""
    if base_url:
        return RemoteProvider(base_url, model, api_key, timeout=timeout, max_retries=max_retries)
    if not model:
        raise ValueError("model must be given (a hub id, local folder or .gguf file) when base_url is not")
    return LocalProvider(model, **engine_kwargs)
