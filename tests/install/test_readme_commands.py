"""The README's two commands, as written there, and what they run (issue 16).

`make serve` is run for real from the repository root (on a free port) and answers a chat
completion through the openai SDK; `make test` is the command running this very test, so its
recipe is checked with `make -n` and its effect on sys.path by test_repo_root.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from process_group import stop_group

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The commands of the README's "Two commands" block (the set-up contract)."""
    section = README.split("## Two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def recipe(command: str) -> list[str]:
    """What make would run for `command` (dry run), one shell line each."""
    proc = subprocess.run([*shlex.split(command), "-n", "--no-print-directory"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_readme_names_make_serve_and_make_test():
    assert readme_commands() == ["make serve", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = readme_commands()[1]
    assert any(line.strip() == test_command for line in ci.splitlines()), ci


@pytest.mark.parametrize("command", ["make serve", "make test"])
def test_readme_commands_never_put_the_repo_root_on_sys_path(command):
    """No recipe line runs `python -m MODULE` (root first on sys.path) except the stdlib's venv."""
    lines = recipe(command)
    assert lines, command
    for line in lines:
        for module, flags in python_m_calls(line):
            assert module == "venv" or "-P" in flags, f"{command}: {line!r} puts the repository root on sys.path"
    main = lines[-1].split()[0]
    assert main.startswith(".venv/bin/") and main.rsplit("/", 1)[1] in {"pagedllm", "pytest"}, lines[-1]


def python_m_calls(line: str) -> list[tuple[str, list[str]]]:
    """(module, interpreter flags before -m) of every `python ... -m MODULE` in a shell line."""
    words, calls = shlex.split(line), []
    for j, word in enumerate(words):
        if re.search(r"(^|/)python[\d.]*$", word):
            flags = []
            for k in range(j + 1, len(words) - 1):
                if not words[k].startswith("-"):
                    break
                if words[k] == "-m":
                    calls.append((words[k + 1], flags))
                    break
                flags.append(words[k])
    return calls


def test_python_m_calls_finds_the_old_recipe():
    assert python_m_calls(".venv/bin/python -m pytest -q tests") == [("pytest", [])]
    assert python_m_calls("test -x .venv/bin/python || python3 -m venv .venv") == [("venv", [])]
    assert python_m_calls(".venv/bin/python -P -m pagedllm.entrypoints.cli serve") == [("pagedllm.entrypoints.cli", ["-P"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_serve_serves_the_bundled_models_and_answers_a_chat_completion_and_embeddings():
    from openai import OpenAI

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    proc = subprocess.Popen(["make", "--no-print-directory", "serve", f"SERVE_ARGS=--port {port}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", max_retries=0, timeout=60)
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                models = client.models.list()
                break
            except Exception:
                assert time.monotonic() < deadline, "make serve did not come up within 240 s"
                time.sleep(1)
        assert [m.id for m in models.data] == ["HuggingFaceTB/SmolLM2-135M-Instruct",
                                               "sentence-transformers/all-MiniLM-L6-v2"]
        emb = client.embeddings.create(model=models.data[1].id, input="The RAG example needs one server.")
        assert len(emb.data[0].embedding) == 384
        reply = client.chat.completions.create(model=models.data[0].id, max_tokens=16, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        choice = reply.choices[0]
        assert choice.message.role == "assistant" and choice.message.content.strip()
        assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
    finally:
        stop_group(proc)
