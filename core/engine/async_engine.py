"""AsyncEngine: one ``LLMEngine`` stepped in a background thread, shared by every caller.

vLLM's ``AsyncLLMEngine`` role. The engine is not thread-safe, so only its own thread touches
it: requests and aborts enter through a thread-safe inbox, outputs leave through per-request
queues (an ``asyncio.Queue`` filled with ``loop.call_soon_threadsafe`` for async callers, a
``queue.SimpleQueue`` for callers in other threads). Model compute therefore never blocks an
event loop (torch releases the GIL inside kernels), and every caller in the process — HTTP
requests, LangChain/LlamaIndex adapters — lands in the same continuous batch.

A caller that stops consuming (client disconnect, ``aclose()``, cancellation, ``break``)
aborts its request and its KV blocks are freed at the next step. If a step raises, the engine
is dead: every pending request fails with ``EngineDeadError`` and ``healthy`` turns False.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.engine.replacement_gather import ReplacementGather
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_END = object()  # a stream ends without a finished output (aborted from elsewhere)


class EngineDeadError(RuntimeError):
    """The engine loop raised; no request can be served until the process restarts."""


class EngineOverloadedError(RuntimeError):
    """``max_waiting_requests`` requests already wait to be scheduled; try again later.

    ``retry_after`` (whole seconds) is 1: a waiting request is scheduled as soon as a running one
    finishes, which at serving speeds is well under a second, so a client that retries after one
    second finds room again unless the server stays saturated (then it is refused again, cheaply).
    """

    retry_after = 1

    def __init__(self, waiting: int, bound: int):
        super().__init__(f"the server is overloaded: {waiting} requests are waiting to be scheduled and "
                         f"max_waiting_requests is {bound}; retry later")
        self.waiting, self.bound = waiting, bound


class EngineShutdownError(EngineDeadError):
    """The server is stopping: requests still running are ended (their blocks freed) with this error."""


@dataclass(slots=True)
class StepRecord:
    """What one engine step did, for metrics listeners (called in the engine thread)."""

    num_generated: int  # tokens sampled in the step = decode batch size
    ttfts: list[float] = field(default_factory=list)  # seconds, requests that got their first token
    itls: list[float] = field(default_factory=list)  # seconds between tokens of one request
    # (final output, e2e seconds, mean seconds per output token after the first or None)
    finished: list[tuple[RequestOutput, float, float | None]] = field(default_factory=list)
    num_aborted: int = 0


class _Stream:
    """The way back to one caller; ``loop`` is None for a thread (sync) caller."""

    __slots__ = ("request_id", "loop", "queue", "arrival", "first_token_time", "last_token_time", "num_outputs",
                 "done")

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None):
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue | queue.SimpleQueue = asyncio.Queue() if loop else queue.SimpleQueue()
        self.arrival = time.time()
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.num_outputs = 0
        self.done = False  # the caller has taken the stream's last item

    def take(self, item) -> RequestOutput | None:
        """One queue item for the caller (``generate`` and ``generate_sync`` alike): the output to
        yield, or None; an error is raised. Sets ``done`` when this item ends the stream."""
        output, self.done = _unpack(item)
        if isinstance(output, BaseException):
            raise output  # done already: the id may belong to another live request
        return output


class AsyncEngine:
    """``generate()`` (async) and ``generate_sync()`` (any thread) over one stepping engine."""

    def __init__(self, engine: LLMEngine | None = None, *, config: EngineConfig | None = None,
                 log_requests: bool = False):
        """Step ``engine``, or build one from ``config`` inside the engine thread (preferred).

        Building in the engine thread keeps every torch parallel region on that one thread:
        once another thread (typically the main one, loading weights) has run an OpenMP
        team, parallel kernels started from a second thread run ~30% slower on CPU.
        """
        if (engine is None) == (config is None):
            raise TypeError("AsyncEngine needs exactly one of engine= or config=")
        self.engine = engine
        self.log_requests = log_requests
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._listeners: list[Callable[[StepRecord], None]] = []
        self._ids = itertools.count()
        # Requests not yet running: adds still in the inbox (counted by callers' threads) plus the
        # scheduler's waiting requests (a snapshot the engine thread takes after each drain and step).
        self._count_lock = threading.Lock()
        self._queued = 0
        self._sched_waiting = 0
        self.dead_error: BaseException | None = None
        self._stopped = False
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._gather: ReplacementGather | None = None  # set in the engine thread for a pooling engine
        self._thread = threading.Thread(target=self._run, args=(config,), name="pagedllm-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._build_error is not None:
            raise self._build_error

    @classmethod
    def from_config(cls, config: EngineConfig, **kwargs) -> "AsyncEngine":
        return cls(config=config, **kwargs)

    # ---- what callers read --------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def healthy(self) -> bool:
        return self.dead_error is None and self._thread.is_alive()

    @property
    def max_waiting_requests(self) -> int | None:
        return self.engine.config.max_waiting_requests

    @property
    def num_waiting_requests(self) -> int:
        """Requests submitted but not yet running: queued for the engine thread or in the scheduler's
        waiting queue (preempted ones included). Never below the true count, at most briefly above."""
        return self._queued + self._sched_waiting

    def check_capacity(self) -> None:
        """Raise EngineOverloadedError when ``max_waiting_requests`` requests already wait.

        The server calls it before it adds a request; ``generate`` itself never refuses (offline
        callers and in-process adapters are not bounded).
        """
        bound = self.max_waiting_requests
        if bound is not None:
            waiting = self.num_waiting_requests
            if waiting >= bound:
                raise EngineOverloadedError(waiting, bound)

    def add_step_listener(self, listener: Callable[[StepRecord], None]) -> None:
        """``listener(StepRecord)`` runs in the engine thread after every step; keep it cheap."""
        self._listeners.append(listener)

    def new_request_id(self, prefix: str = "req") -> str:
        return f"{prefix}-{next(self._ids)}"

    # ---- async API ------------------------------------------------------------------------
    async def generate(self, prompt, params: SamplingParams, request_id: str | None = None,
                       lora_request=None) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs (cumulative or delta per ``params.output_kind``).

        Raises ValueError/TypeError for a bad request (from ``LLMEngine.add_request``) and
        EngineDeadError when the engine loop died. Leaving the loop early aborts the request.
        """
        stream = self._submit(prompt, params, request_id, asyncio.get_running_loop(), lora_request)
        try:
            while not stream.done:
                item = stream.take(await stream.queue.get())
                if item is not None:
                    yield item
        finally:
            self._abort_unless_done(stream)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (at the next step); unknown ids are ignored."""
        self._inbox.put(("abort", request_id))

    def abort_all(self, error: BaseException) -> None:
        """End every request in flight (and every one still queued) with ``error``, freeing their blocks:
        what a stopping server does with streams that outlive its grace period."""
        self._inbox.put(("abort_all", error))

    def num_used_blocks(self) -> int:
        """KV blocks held by requests (the engine thread may be stepping: a snapshot)."""
        manager = self.engine.scheduler.block_manager
        return max(0, getattr(manager, "num_blocks", 0) - manager.num_free_blocks)

    def _abort_unless_done(self, stream: _Stream) -> None:
        """A caller left the stream before its end: free the request (a finished one is gone already)."""
        if not stream.done:
            self.abort(stream.request_id)

    # ---- sync API (other threads) ---------------------------------------------------------
    def generate_sync(self, prompt, params: SamplingParams, request_id: str | None = None,
                      lora_request=None) -> Iterator[RequestOutput]:
        """Like ``generate`` but a plain iterator, for callers in threads (adapters, tools).

        Closing the iterator early (``break``, ``close()``, garbage collection) aborts the request.
        """
        stream = self._submit(prompt, params, request_id, None, lora_request)
        try:
            while not stream.done:
                item = stream.take(stream.queue.get())
                if item is not None:
                    yield item
        finally:
            self._abort_unless_done(stream)

    def shutdown(self, timeout: float | None = 5.0) -> None:
        self._stopped = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout)

    # ---- the engine thread ------------------------------------------------------------------
    def _submit(self, prompt, params, request_id, loop, lora_request=None) -> _Stream:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine loop died: {self.dead_error!r}")
        if self._stopped:
            raise EngineDeadError("the engine was shut down")
        if lora_request is not None:  # read the adapter here, not in the engine thread between steps
            self.engine.load_lora(lora_request)
        stream = _Stream(request_id or self.new_request_id(), loop)
        with self._count_lock:
            self._queued += 1
        self._inbox.put(("add", (stream, prompt, params, lora_request)))
        if self.dead_error is not None:  # died while we queued: nobody will drain the inbox
            self._put_now(stream, EngineDeadError(f"the engine loop died: {self.dead_error!r}"))
        return stream

    def _run(self, config: EngineConfig | None) -> None:
        if config is not None:
            try:
                self.engine = LLMEngine(config)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the constructor
                self._build_error = exc
                self._ready.set()
                return
        if self.engine.runner_type == "pooling":
            self._gather = ReplacementGather()
        self._ready.set()
        try:
            while True:
                block = not self.engine.has_unfinished_requests()
                if self._drain(block) is None:
                    return
                if self._gather is not None and not self._gather.wait(self.engine.scheduler,
                                                                      functools.partial(self._drain, True)):
                    return
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as exc:  # noqa: BLE001 - any failure kills the loop: tell everyone
            logger.exception("engine loop died")
            self.dead_error = exc
            err = EngineDeadError(f"the engine loop died: {exc!r}")
            for stream in list(self._streams.values()):
                self._put_now(stream, err)
            self._streams.clear()
            self._fail_inbox(err)
        finally:
            if config is not None:  # an engine built here is stopped here: its worker processes (TP) too
                self.engine.shutdown()

    def _drain(self, block: bool, timeout: float | None = None) -> int | None:
        """Apply queued adds/aborts, waiting (up to ``timeout`` seconds) for the first when ``block``;
        how many were applied, None once asked to stop."""
        aborted = taken = applied = 0
        while True:
            try:
                kind, payload = self._inbox.get(timeout=timeout) if block else self._inbox.get_nowait()
            except queue.Empty:
                break
            block = False
            applied += 1
            if kind == "stop":
                return None
            if kind == "add":
                taken += 1
                stream, prompt, params, lora_request = payload
                try:
                    if stream.request_id in self._streams:
                        raise ValueError(f"request_id {stream.request_id!r} is already in use")
                    self.engine.add_request(stream.request_id, prompt, params, arrival_time=stream.arrival,
                                            lora_request=lora_request)
                except (ValueError, TypeError) as exc:
                    self._put_now(stream, exc)
                    continue
                self._streams[stream.request_id] = stream
                if self.log_requests:
                    logger.info("added request %s", stream.request_id)
            elif kind == "abort_all":
                for request_id, stream in list(self._streams.items()):
                    self.engine.abort_request(request_id)
                    self._put_now(stream, payload)
                    aborted += 1
                self._streams.clear()
            elif kind == "abort":
                stream = self._streams.pop(payload, None)
                if stream is not None:
                    self.engine.abort_request(payload)
                    aborted += 1
                    self._put_now(stream, _END)
                    if self.log_requests:
                        logger.info("aborted request %s", payload)
        # The scheduler's count first, then the inbox's: the sum is never below the true count.
        self._refresh_waiting()
        if taken:
            with self._count_lock:
                self._queued -= taken
        if aborted:
            self._notify(StepRecord(num_generated=0, num_aborted=aborted))
        return applied

    def _refresh_waiting(self) -> None:
        """The scheduler's share of ``num_waiting_requests`` (a set over its queue), kept only when
        ``max_waiting_requests`` reads it: unbounded engines skip it on every loop turn."""
        if self.max_waiting_requests is not None:
            self._sched_waiting = self.engine.scheduler.num_waiting_requests

    def _step(self) -> None:
        before = self.engine.stats.generation_tokens
        started = time.perf_counter()
        outputs = self.engine.step()
        if self._gather is not None:
            self._gather.stepped(started, len(outputs), self.engine.get_num_unfinished_requests())
        self._refresh_waiting()
        now = time.time()
        record = StepRecord(num_generated=self.engine.stats.generation_tokens - before)
        by_loop: dict = defaultdict(list)
        sync: list = []
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if stream.first_token_time is None:
                stream.first_token_time = now
                record.ttfts.append(now - stream.arrival)
            else:
                record.itls.append(now - stream.last_token_time)
            stream.last_token_time = now
            stream.num_outputs += 1
            if out.finished:
                del self._streams[out.request_id]
                tpot = ((now - stream.first_token_time) / (stream.num_outputs - 1)
                        if stream.num_outputs > 1 else None)
                record.finished.append((out, now - stream.arrival, tpot))
            (by_loop[stream.loop] if stream.loop else sync).append((stream, out))
        self._deliver(by_loop, sync)
        self._notify(record)

    def _notify(self, record: StepRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a metrics bug must not kill serving
                logger.exception("step listener failed")

    @staticmethod
    def _deliver(by_loop: dict, sync: list) -> None:
        """One wake-up per event loop per step, however many of its requests got output."""
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: its callers are gone
                pass
        for stream, item in sync:
            stream.queue.put(item)

    def _put_now(self, stream: _Stream, item) -> None:
        if stream.loop is None:
            stream.queue.put(item)
        else:
            self._deliver({stream.loop: [(stream, item)]}, [])

    def _fail_inbox(self, err: BaseException) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                with self._count_lock:
                    self._queued -= 1
                self._put_now(payload[0], err)


def _unpack(item) -> tuple[RequestOutput | BaseException | None, bool]:
    """A stream queue item -> (output or error to hand out, or None; whether the stream is over).

    An error ends the stream: its request is gone (or never existed), so nothing is aborted."""
    if item is _END:
        return None, True
    if isinstance(item, BaseException):
        return item, True
    return item, item.finished


def _put_all(items: list) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


# ---- one engine per config per process -----------------------------------------------------
_ENGINES: dict[str, AsyncEngine] = {}
_ENGINES_LOCK = threading.Lock()


def _config_key(config: EngineConfig) -> str:
    return repr(dataclasses.asdict(config))


def get_engine(config: EngineConfig, **kwargs) -> AsyncEngine:
    """The process-wide AsyncEngine for ``config`` (built on first use), so all callers batch together."""
    key = _config_key(config)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or not engine.healthy:
            engine = _ENGINES[key] = AsyncEngine.from_config(config, **kwargs)
        return engine
