"""vLLM's CORS flags (``--allowed-origins`` ...; default: every origin) and HTTPS (``--ssl-keyfile`` /
``--ssl-certfile``): a browser's preflight is answered before the API-key check; an HTTPS server
answers with the certificate it was given, as a client that trusts only that certificate sees."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import requests
from live_server import free_port, read_until_ready, start_server, tiny_model_dir  # noqa: F401 - fixtures

from pagedllm.entrypoints.cli import build_parser
from pagedllm.entrypoints.openai.api_server import cors_settings, run_server

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def preflight(base: str, origin: str) -> requests.Response:
    return requests.options(base + "/v1/chat/completions", headers={"Origin": origin, **PREFLIGHT}, timeout=10)


def test_default_cors_allows_any_origin_before_the_api_key(tiny_model_dir):
    live = start_server(tiny_model_dir, api_key="k")
    try:
        r = preflight(live.base, "https://app.example")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        hit = requests.get(live.base + "/v1/models", headers={"Origin": "https://app.example",
                                                              "Authorization": "Bearer k"}, timeout=10)
        assert hit.status_code == 200 and hit.headers["access-control-allow-origin"] == "*"
    finally:
        live.stop()


def test_allowed_origins_restrict_the_browser(tiny_model_dir):
    live = start_server(tiny_model_dir, cors=cors_settings(["https://ok.example"]))
    try:
        ok = preflight(live.base, "https://ok.example")
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ok.example"
        bad = preflight(live.base, "https://evil.example")
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    finally:
        live.stop()


@pytest.mark.parametrize("flags, message", [
    (["--ssl-keyfile", "key.pem"], "--ssl-keyfile and --ssl-certfile go together"),
    (["--ssl-keyfile", "/nonexistent/key.pem", "--ssl-certfile", "/nonexistent/cert.pem"], "is not a file"),
])
def test_https_flags_are_checked_before_any_model_loads(capsys, flags, message):
    args = build_parser().parse_args(["serve", "some/model-never-loaded", *flags])
    assert run_server(args) == 2
    assert message in capsys.readouterr().err


def test_allowed_origins_must_be_a_json_list(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--allowed-origins", "https://a.example"])
    assert "--allowed-origins" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_serve_over_https(tiny_model_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "pagedllm"), "serve", tiny_model_dir, "--port", str(port),
         "--dtype", "float32", "--kv-cache-memory", "8M", "--max-model-len", "256", "--ssl-keyfile", str(key),
         "--ssl-certfile", str(cert)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert f"https://127.0.0.1:{port}/v1" in read_until_ready(proc, 120)
        r = requests.get(f"https://localhost:{port}/v1/models", verify=str(cert), timeout=10)
        assert r.status_code == 200 and r.json()["data"]
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://localhost:{port}/v1/models", timeout=10)  # plain HTTP is not spoken
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # SIGTERM after a failed TLS handshake can hang uvicorn's shutdown
            proc.kill()
            proc.wait(30)
