"""SIGTERM during 16 streams: `pagedllm serve` stops accepting, lets requests run for a grace period, then ends
the rest with an error event; every stream closes with ``data: [DONE]``, no KV block is left held (the exit
log line reads the block manager after the engine stopped) and the process exits 0 within the bound."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import requests
from live_server import free_port, tiny_model_dir  # noqa: F401 - fixture

from pagedllm.entrypoints.openai.server import GRACEFUL_SHUTDOWN_S, STREAM_GRACE_S


def _read_stream(base: str, i: int, events: list, started: threading.Event) -> None:
    body = {"model": "tiny", "prompt": f"stream {i}", "max_tokens": 480, "ignore_eos": True, "stream": True}
    seen = []
    try:
        with requests.post(base + "/v1/completions", json=body, stream=True, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    seen.append(line[6:].decode())
                    started.set()
    except requests.RequestException as exc:  # a cut connection is what this test must not see
        seen.append(f"connection error: {exc}")
    events[i] = seen


def test_sigterm_ends_every_stream_cleanly_and_exits_0(tiny_model_dir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "--served-model-name", "tiny", "--dtype", "float32", "--kv-cache-memory", "16M", "--max-model-len", "512",
         "--max-num-seqs", "2", "--disable-log-requests"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while not any("OpenAI(" in ln for ln in output):
            assert proc.poll() is None and time.time() < deadline, "".join(output)
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        events: list = [None] * 16
        started = threading.Event()
        threads = [threading.Thread(target=_read_stream, args=(base, i, events, started)) for i in range(16)]
        for t in threads:
            t.start()
        assert started.wait(60)
        time.sleep(0.5)  # all 16 accepted, two generating, the rest waiting
        stopped_at = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GRACEFUL_SHUTDOWN_S + 20) == 0, "".join(output)
        took = time.time() - stopped_at
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(output)
    assert took < GRACEFUL_SHUTDOWN_S + 5, took
    assert "KV blocks still held by requests: 0" in log, log[-2000:]
    ends = []
    for seen in events:
        assert seen and seen[-1] == "[DONE]", seen[-3:] if seen else seen
        last = json.loads(seen[-2])
        if "error" in last:
            assert last["error"]["code"] == 503 and "shutting down" in last["error"]["message"]
            ends.append("ended by the shutdown")
        else:
            assert last["choices"][0]["finish_reason"] == "length"
            ends.append("finished")
    # 16 x 480 tokens two at a time outlast the grace period: the shutdown path is taken
    assert "ended by the shutdown" in ends and took >= STREAM_GRACE_S - 1, (ends, took)
