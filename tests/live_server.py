"""A live OpenAI-compatible server on a free loopback port, over a tiny random Llama (fast on one core).
At the top of tests/ so every folder imports it (tests/ is on sys.path through its conftest).

Test modules import the fixtures they use from here (`from live_server import server`)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from model_fixtures import make_tiny_model

TINY_MAX_MODEL_LEN = 512


def read_until_ready(proc, timeout: float) -> str:
    """The output of a ``pagedllm serve`` subprocess (text stdout) up to its ready line (the one showing
    ``OpenAI(...)``); fails with everything it printed if it exits or ``timeout`` seconds pass first."""
    lines, deadline = [], time.time() + timeout
    while not any("OpenAI(" in ln for ln in lines):
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "".join(lines)
        lines.append(line)
        assert time.time() < deadline, "".join(lines)
    return "".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` in a thread of this process (so tests can look at the engine too)."""

    def __init__(self, app, engine):
        import uvicorn

        self.app, self.engine = app, engine
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def start_server(model_dir: str, **app_kwargs) -> LiveServer:
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    config = EngineConfig.from_kwargs(model=model_dir, dtype="float32", kv_cache_memory=16 << 20,
                                      max_model_len=TINY_MAX_MODEL_LEN, seed=0)
    engine = AsyncEngine.from_config(config)
    return LiveServer(build_app(engine, ["tiny"], **app_kwargs), engine)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    live = start_server(tiny_model_dir)
    yield live
    live.stop()
