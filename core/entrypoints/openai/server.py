"""The uvicorn server ``pagedllm serve`` runs: it prints the ready line once listening, ends requests that
outlive a stop's grace period with an error event, and stops the process (exit code 1) when an engine loop
dies, so an orchestrator restarts it instead of routing to a server that can only answer 503."""
from __future__ import annotations

import asyncio
import logging

import uvicorn

from pagedllm.engine.async_engine import AsyncEngine, EngineShutdownError

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10  # on SIGTERM/Ctrl+C, open connections get this long before the server stops anyway
# ... and requests still generating get this long to finish; then each ends with an error event
# (503, "the server is shutting down") and its blocks are freed, so streams close cleanly within the bound
STREAM_GRACE_S = 5
WATCH_INTERVAL_S = 0.5  # how often the engines' health is read


class ServingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engines: list[AsyncEngine], ready_message: str | None = None):
        super().__init__(config)
        self.engines, self.ready_message = engines, ready_message
        self.exit_code = 0
        self._watch: asyncio.Task | None = None

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            self._watch = asyncio.create_task(self._exit_when_an_engine_dies())
            if self.ready_message:
                print(self.ready_message, flush=True)

    async def shutdown(self, sockets=None):
        """Stop accepting (uvicorn), give running requests STREAM_GRACE_S, then end the rest."""
        if self._watch is not None:
            self._watch.cancel()
        timer = asyncio.get_running_loop().call_later(STREAM_GRACE_S, end_running_requests, self.engines)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    async def _exit_when_an_engine_dies(self) -> None:
        while not self.should_exit:
            dead = [e for e in self.engines if not e.healthy]
            if dead:
                logger.error("an engine loop died (%r): stopping the server (exit code 1) so it is restarted",
                             dead[0].dead_error)
                self.exit_code = 1
                self.should_exit = True
                return
            await asyncio.sleep(WATCH_INTERVAL_S)


def end_running_requests(engines: list[AsyncEngine]) -> None:
    """The grace period is over: every request still running ends with an error event, its blocks freed."""
    for engine in engines:
        engine.abort_all(EngineShutdownError("the server is shutting down; retry on another replica or later"))
