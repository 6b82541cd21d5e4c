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
