"""`pagedllm serve -tp 2` as users start it: it answers, and when its worker is killed a request fails
with an error (no hang), /health answers 503, and stopping the server leaves no process. ``slow``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from live_server import free_port, read_until_ready, tiny_model_dir  # noqa: F401 - fixtures
from process_group import stop_group
from tensor_parallel_helpers import TWO_CORES, alive, children

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TWO_CORES, reason="tensor_parallel_size=2 needs 2 CPU cores")]


def test_killed_worker_fails_requests_and_health(tiny_model_dir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "-tp", "2", "--dtype", "float32", "--kv-cache-memory", "8M", "--max-model-len", "512",
         "--served-model-name", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        read_until_ready(proc, 180)
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        base = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        assert requests.post(base + "/v1/completions", json=body, timeout=60).status_code == 200
        assert requests.get(base + "/health", timeout=10).status_code == 200
        (worker,) = children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        started = time.monotonic()
        failed = requests.post(base + "/v1/completions", json={**body, "max_tokens": 64}, timeout=60)
        assert failed.status_code >= 500 and time.monotonic() - started < 30, failed.text
        assert "rank 1" in failed.text, failed.text
        assert requests.get(base + "/health", timeout=10).status_code == 503
    finally:
        stop_group(proc)
    assert not alive(worker)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Ray's GCS, raylet, agents and actors when the server started Ray)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = children(parent) if os.path.exists(f"/proc/{parent}") else []
        found += kids
        todo += kids
    return found


def test_serve_over_ray_answers_and_stops_clean(tiny_model_dir):
    """`--distributed-executor-backend ray`: the server starts a local Ray, answers, and SIGTERM (to the server
    alone) ends its actor and the Ray it started."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "-tp", "2", "--distributed-executor-backend", "ray", "--dtype", "float32", "--kv-cache-memory", "8M",
         "--max-model-len", "512", "--served-model-name", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree = []
    try:
        read_until_ready(proc, 180)
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        answer = requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        tree = descendants(proc.pid)
        assert len(tree) >= 3  # Ray's GCS and raylet, and the rank-1 actor
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [p for p in tree if alive(p)] == []
    finally:
        if proc.poll() is None:
            stop_group(proc)
        for pid in filter(alive, tree):  # what the assertion above found left: not left for the next test
            os.kill(pid, signal.SIGKILL)
