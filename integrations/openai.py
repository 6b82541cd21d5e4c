"""A drop-in in-process OpenAI client: ``OpenAI(model=...)`` / ``AsyncOpenAI(model=...)``.

They return real ``openai.OpenAI`` / ``openai.AsyncOpenAI`` clients whose HTTP transport calls
the OpenAI-compatible server app (``build_app``) in this process: no socket, no port, yet every
request goes through the same validation, SSE framing and error shapes as ``pagedllm serve``, so
code written for a server (streams, ``openai.BadRequestError``, ``with_raw_response``) runs
unchanged. Streams are truly incremental, and closing one aborts its engine request.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import openai

if int(openai.__version__.split(".")[0]) >= 3:  # openai 3.x talks httpx2; 2.x talks httpx
    import httpx2 as httpx
else:
    import httpx

BASE_URL = "http://pagedllm.in-process/v1"

_APPS: dict[tuple, object] = {}
_APPS_LOCK = threading.Lock()


def app_for(model: str, *, tool_call_parser: str | None = None, **engine_kwargs):
    """The server app over the shared engine for ``model`` (one per engine and tool parser per process).

    ``tool_call_parser``: how ``tool_choice="auto"`` answers are read (the server's ``--enable-auto-tool-choice
    --tool-call-parser``); without it ``auto`` is refused, as by a server started without those flags."""
    from pagedllm.entrypoints.openai.api_server import build_app
    from pagedllm.provider import LocalProvider

    provider = LocalProvider(model, **engine_kwargs)
    with _APPS_LOCK:
        key = (id(provider.engine), tool_call_parser)
        app = _APPS.get(key)
        if app is None or app.state.engine is not provider.engine:
            app = _APPS[key] = build_app(provider.engine, [provider.info.name], tool_call_parser=tool_call_parser)
        return app


def OpenAI(model: str, *, api_key: str = "EMPTY", app=None, tool_call_parser: str | None = None,
           **engine_kwargs) -> openai.OpenAI:
    """An ``openai.OpenAI`` client served by the in-process engine for ``model`` (engine kwargs: vLLM's;
    ``tool_call_parser``: see ``app_for``)."""
    app = app or app_for(model, tool_call_parser=tool_call_parser, **engine_kwargs)
    return openai.OpenAI(base_url=BASE_URL, api_key=api_key,
                         http_client=httpx.Client(transport=ASGITransport(app)))


def AsyncOpenAI(model: str, *, api_key: str = "EMPTY", app=None, tool_call_parser: str | None = None,
                **engine_kwargs) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` client served by the in-process engine for ``model``."""
    app = app or app_for(model, tool_call_parser=tool_call_parser, **engine_kwargs)
    return openai.AsyncOpenAI(base_url=BASE_URL, api_key=api_key,
                              http_client=httpx.AsyncClient(transport=AsyncASGITransport(app)))


# ---- transports ------------------------------------------------------------------------------
async def _call_app(app, request) -> tuple[int, list, AsyncIterator[bytes], asyncio.Event]:
    """Start ``app`` on ``request``; return once the response head is sent (the body streams on).

    Unlike httpx's own ASGITransport this does not buffer the whole body, so SSE streams arrive
    as they are generated; setting the returned event tells the app the client left.
    """
    body = await request.aread()
    scope = _asgi_scope(request)
    disconnected = asyncio.Event()
    sent_body = False
    messages: asyncio.Queue = asyncio.Queue()

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if disconnected.is_set():
            raise OSError("the in-process client closed the response")
        await messages.put(message)

    async def run():
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            await messages.put(exc)
        else:
            await messages.put(None)

    task = asyncio.ensure_future(run())
    start = await messages.get()
    if isinstance(start, BaseException):
        raise start
    if start is None or start["type"] != "http.response.start":
        raise RuntimeError("the app ended without a response")
    return start["status"], start.get("headers", []), _body_chunks(messages, disconnected, task), disconnected


def _asgi_scope(request) -> dict:
    """The ASGI HTTP scope for an httpx request, as a server would hand it to the app."""
    url = request.url
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": url.scheme, "path": url.path, "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query, "root_path": "", "server": ("pagedllm.in-process", 80),
            "client": ("127.0.0.1", 0), "headers": [(k.lower(), v) for k, v in request.headers.raw]}


async def _body_chunks(messages: asyncio.Queue, disconnected: asyncio.Event, task) -> AsyncIterator[bytes]:
    """The response body as the app sends it; when the reader stops (end, error or close) the
    app is told the client left and its task is awaited, so an abandoned stream aborts its request."""
    try:
        while True:
            message = await messages.get()
            if isinstance(message, BaseException):
                raise message
            if message is None:
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return
    finally:
        disconnected.set()
        await asyncio.gather(task, return_exceptions=True)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, chunks):
        self._chunks = chunks

    async def __aiter__(self):
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()


class AsyncASGITransport(httpx.AsyncBaseTransport):
    """Calls an ASGI app in the caller's event loop, streaming the response body."""

    def __init__(self, app):
        self.app = app

    async def handle_async_request(self, request):
        status, headers, chunks, _ = await _call_app(self.app, request)
        return httpx.Response(status, headers=headers, stream=_AsyncBody(chunks), request=request)


class _Loop:
    """One event loop in a daemon thread, where the sync transport runs the app."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coro):
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="pagedllm-openai-shim", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, chunks):
        self._chunks = chunks

    def __iter__(self):
        while True:
            try:
                yield _Loop.run(self._chunks.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        _Loop.run(self._chunks.aclose())


class ASGITransport(httpx.BaseTransport):
    """Calls an ASGI app from synchronous code (through the shim's loop thread), streaming the body."""

    def __init__(self, app):
        self.app = app

    def handle_request(self, request):
        request.read()
        status, headers, chunks, _ = _Loop.run(_call_app(self.app, request))
        return httpx.Response(status, headers=headers, stream=_SyncBody(chunks), request=request)
