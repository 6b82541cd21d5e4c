"""A dead engine loop: the request in flight gets a 503 error, /health answers 503, later callers fail fast."""
from __future__ import annotations

import pytest
import requests
from live_server import LiveServer, tiny_model_dir  # noqa: F401 - fixtures

from pagedllm import EngineConfig, SamplingParams
from pagedllm.engine.async_engine import AsyncEngine, EngineDeadError
from pagedllm.entrypoints.openai.api_server import build_app


def test_dead_engine_fails_requests_and_health(tiny_model_dir):
    config = EngineConfig.from_kwargs(model=tiny_model_dir, dtype="float32", kv_cache_memory=8 << 20)
    eng = AsyncEngine.from_config(config)
    live = LiveServer(build_app(eng, ["tiny"]), eng)
    try:
        assert requests.get(live.base + "/health", timeout=10).status_code == 200

        def boom():
            raise RuntimeError("simulated kernel failure")

        eng.engine.step = boom
        r = requests.post(live.url + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
                          timeout=30)
        assert r.status_code == 503 and "simulated kernel failure" in r.json()["error"]["message"]
        assert requests.get(live.base + "/health", timeout=10).status_code == 503
        with pytest.raises(EngineDeadError):
            list(eng.generate_sync("hi", SamplingParams(max_tokens=2)))
    finally:
        live.stop()


def test_a_dead_engine_stops_the_server_with_exit_code_1(tiny_model_dir):
    """The server `pagedllm serve` runs (ServingServer) watches its engines: a dead loop ends it, code 1, so an
    orchestrator restarts the process; the request in flight got its 503 first."""
    import threading
    import time

    import uvicorn
    from live_server import free_port

    from pagedllm.entrypoints.openai.server import WATCH_INTERVAL_S, ServingServer

    eng = AsyncEngine.from_config(EngineConfig.from_kwargs(model=tiny_model_dir, dtype="float32",
                                                           kv_cache_memory=8 << 20))
    port = free_port()
    server = ServingServer(uvicorn.Config(build_app(eng, ["tiny"]), host="127.0.0.1", port=port,
                                          log_level="warning"), [eng])
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        ok = requests.post(base + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200 and server.exit_code == 0 and thread.is_alive()

        def boom():
            raise RuntimeError("simulated kernel failure")

        eng.engine.step = boom
        r = requests.post(base + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503
        thread.join(WATCH_INTERVAL_S + 15)
        assert not thread.is_alive() and server.exit_code == 1
    finally:
        server.should_exit = True
        thread.join(10)
        eng.shutdown()
