"""`pagedllm serve` as users start it: a subprocess, the ready line, --api-key, open /health, start-up errors."""
from __future__ import annotations

import os
import subprocess
import sys

import requests
from live_server import free_port, read_until_ready, tiny_model_dir  # noqa: F401 - fixtures


def test_serve_with_api_key(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "PAGEDLLM_API_KEY": "s3cret", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "--served-model-name", "tiny", "alias", "--dtype", "float32", "--kv-cache-memory", "8M",
         "--max-model-len", "256", "--disable-log-requests"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        ready = read_until_ready(proc, 120)
        assert f"http://127.0.0.1:{port}/v1" in ready and "Bearer s3cret" in ready and "OpenAI(" in ready
        base = f"http://127.0.0.1:{port}"
        body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        missing = requests.post(base + "/v1/chat/completions", json=body, timeout=30)
        wrong = requests.post(base + "/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": "Bearer nope"})
        assert missing.status_code == wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "AuthenticationError"
        assert requests.post(base + "/generate", json={"prompt": "hi"}, timeout=30).status_code == 401
        assert requests.get(base + "/v1/models", timeout=30).status_code == 401
        good = requests.post(base + "/v1/chat/completions", json=body, timeout=60,
                             headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["model"] == "alias"
        assert requests.get(base + "/health", timeout=10).status_code == 200
        assert "pagedllm:generation_tokens_total" in requests.get(base + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        proc.wait(30)


def test_unbuilt_feature_fails_at_startup(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
                           "--pipeline-parallel-size", "9", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2  # more stages than the tiny model's layers
    assert "pipeline_parallel_size=9 is larger than the model's" in proc.stderr and "cannot start" in proc.stderr


def test_serve_and_chat_help_list_the_flags(capsys):
    import pytest

    from pagedllm.entrypoints.cli import main

    for words, flags in ((["serve"], ("--host", "--port", "--served-model-name", "--api-key", "--max-model-len",
                                      "--chat-template", "--enable-prefix-caching", "--kv-cache-memory")),
                         (["chat"], ("--system", "--max-tokens")),
                         (["bench", "serve"], ("--base-url", "--concurrency", "--num-prompts"))):
        with pytest.raises(SystemExit) as exc:
            main([*words, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0 and all(f in out for f in flags), out
