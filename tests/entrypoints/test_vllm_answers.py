"""Rough edges a vLLM user meets first (issue #21.4): each answers in one line, as vLLM would.

--device cuda without CUDA, --disable-custom-all-reduce, transformers' "torch_dtype is deprecated" at every
start, and the error JSON's ``code`` (vLLM: the HTTP status as a number)."""
from __future__ import annotations

import logging
import subprocess
import sys

import openai
import pytest
import requests
import torch
from live_server import server, tiny_model_dir  # noqa: F401 - fixtures

from pagedllm import config as config_module
from pagedllm.config import EngineConfig, warn_without_effect
from pagedllm.entrypoints.cli import build_parser, main
from pagedllm.entrypoints.cli_args import engine_kwargs

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")


@no_cuda
@pytest.mark.parametrize("words", [["serve", "some/model"], ["generate", "hi"], ["chat"]])
def test_device_cuda_without_cuda_is_one_line_and_exit_2(words, capsys):
    assert main([*words, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "AssertionError" not in err, err
    assert "cannot start: device='cuda'" in err and "--device cpu" in err, err


@no_cuda
def test_device_cuda_without_cuda_from_the_console_script():
    """As users type it: a subprocess, no traceback, a non-zero exit."""
    proc = subprocess.run([sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", "some/model",
                           "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "device='cuda'" in proc.stderr


@no_cuda
def test_llm_device_cuda_without_cuda_raises_value_error():
    with pytest.raises(ValueError, match="device='cuda'.*device='cpu'"):
        EngineConfig.from_kwargs("m", device="cuda")


def test_disable_custom_all_reduce_is_accepted_and_warns_once_without_effect(monkeypatch, caplog):
    monkeypatch.setattr(config_module, "_warned", set())
    args = build_parser().parse_args(["serve", "some/model", "--disable-custom-all-reduce"])
    config = EngineConfig.from_kwargs(**engine_kwargs(args, model="some/model"))
    assert config.disable_custom_all_reduce is True
    for device in (torch.device("cpu"), torch.device("cuda"), torch.device("cpu")):
        warn_without_effect(config, device)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.startswith("disable_custom_all_reduce=True ") and "no effect" in message


@pytest.mark.parametrize("which", ["tiny", pytest.param("bundled", marks=pytest.mark.slow)])
def test_no_torch_dtype_deprecation_at_start(which, tiny_model_dir):
    """A fresh process (transformers warns once per process) builds an engine; its stderr has no such warning."""
    model = tiny_model_dir if which == "tiny" else "HuggingFaceTB/SmolLM2-135M-Instruct"
    code = ("from pagedllm import LLM; LLM(model=%r, dtype='float32', kv_cache_memory=8 << 20, max_model_len=64)"
            % model)
    proc = subprocess.run([sys.executable, "-P", "-W", "always", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torch_dtype" not in proc.stderr, proc.stderr


def test_error_code_is_the_status_as_a_number(server):
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt="hi", max_tokens=-5)
    # The body carries the number (vLLM's ErrorResponse); the SDK still parses it (its .code field is a str).
    assert bad.value.status_code == 400 and bad.value.body["code"] == 400 and isinstance(bad.value.body["code"], int)
    assert bad.value.code == "400" and bad.value.param == "max_tokens"
    missing = requests.get(server.base + "/v1/no-such-route", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
