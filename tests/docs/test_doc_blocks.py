"""Every code block in README.md and docs/*.md runs as copied (issue 21, point 1).

Fenced ```python blocks run with this venv's python in a fresh temporary directory (never the
repository root on sys.path); ```bash / ```sh / ```console blocks run with bash -e there, the venv's
bin first on PATH. A block not meant to run as-is carries a marker, an HTML comment on the line
right before its fence (invisible when rendered):

    <!-- doc-test: skip (reason) -->     not run; the reason is the skip message (make, pip, GPU, ...)
    <!-- doc-test: partial (reason) -->  a fragment: python blocks must still parse, nothing runs
    <!-- doc-test: server -->            needs `make serve`: the test serves the bundled model on a
                                         free port and rewrites 127.0.0.1:8000 / localhost:8000 to it
    <!-- doc-test: slow -->              runs, marked slow (deselected by -m "not slow")

`server` and `slow` combine (`<!-- doc-test: server slow -->`). An unmarked block that fails fails
its test. Unlabelled fences (diagrams) and other languages are not code and are not collected.
"""
from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from process_group import stop_group

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
BUNDLED = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"  # make serve hosts it beside the chat model
BIN = Path(sys.executable).parent


@dataclass
class Block:
    path: Path
    line: int           # 1-based line of the opening fence
    lang: str           # "python" or "bash"
    code: str
    kinds: set[str]     # marker words: skip, partial, server, slow
    reason: str

    @property
    def id(self) -> str:
        tag = "-".join(sorted(self.kinds)) or "run"
        return f"{self.path.relative_to(ROOT)}:{self.line}:{self.lang}:{tag}"


def parse_marker(text: str) -> tuple[set[str], str]:
    """`skip (why)` -> ({"skip"}, "why"); `server slow` -> ({"server", "slow"}, "")."""
    match = re.fullmatch(r"([a-z ]+?)\s*(?:\((.*)\))?", text)
    if not match:
        raise ValueError(f"bad doc-test marker {text!r}")
    kinds, reason = set(match.group(1).split()), (match.group(2) or "").strip()
    unknown = kinds - {"skip", "partial", "server", "slow"}
    if unknown:
        raise ValueError(f"unknown doc-test marker word(s) {sorted(unknown)} in {text!r}")
    if kinds & {"skip", "partial"} and not reason:
        raise ValueError(f"doc-test marker {text!r} needs a (reason)")
    return kinds, reason


def extract(path: Path) -> list[Block]:
    lines, blocks, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        lang = LANGS.get(fence.group(1).lower())
        marker = MARKER.match(lines[i - 1]) if i else None
        if lang:
            kinds, reason = parse_marker(marker.group(1)) if marker else (set(), "")
            blocks.append(Block(path, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n", kinds, reason))
        i = end + 1
    return blocks


BLOCKS = [b for path in DOCS for b in extract(path)]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONSTARTUP")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_block(block: Block, cwd: Path, port: int | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    code = block.code
    if port is not None:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("localhost:8000", f"localhost:{port}")
    if block.lang == "python":
        (cwd / "block.py").write_text(code)
        cmd = [str(BIN / "python"), "block.py"]
    else:
        (cwd / "block.sh").write_text(code)
        cmd = ["bash", "-e", "-o", "pipefail", "block.sh"]
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_port(tmp_path_factory):
    """`make serve`'s command (pagedllm serve on the bundled chat model, --also the bundled embedder) on a free port."""
    port, cwd = free_port(), tmp_path_factory.mktemp("server")
    log = open(cwd / "server.log", "w+")
    command = [str(BIN / "pagedllm"), "serve", BUNDLED, "--also", BUNDLED_EMBEDDER, "--port", str(port)]
    proc = subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            log.seek(0)
            assert proc.poll() is None, log.read()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "pagedllm serve did not come up within 300 s"
                time.sleep(1)
        yield port
    finally:
        stop_group(proc)
        log.close()


def params():
    for block in BLOCKS:
        marks = [pytest.mark.slow] if "slow" in block.kinds else []
        yield pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", list(params()))
def test_doc_block_runs_as_copied(block: Block, tmp_path, request):
    if "skip" in block.kinds:
        pytest.skip(f"doc-test: skip ({block.reason})")
    if "partial" in block.kinds:
        if block.lang == "python":
            ast.parse(block.code, filename=block.id)   # a fragment, but still Python
        return
    port = request.getfixturevalue("served_port") if "server" in block.kinds else None
    proc = run_block(block, tmp_path, port)
    assert proc.returncode == 0, (f"{block.id} failed (exit {proc.returncode}):\n{block.code}\n"
                                  f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


def test_blocks_were_found():
    files = {b.path.name for b in BLOCKS}
    assert {"README.md", "integrations.md"} <= files, files
    assert any(b.lang == "python" and not b.kinds & {"skip", "partial"} for b in BLOCKS)


def test_marker_parsing():
    assert parse_marker("skip (needs a GPU)") == ({"skip"}, "needs a GPU")
    assert parse_marker("server slow") == ({"server", "slow"}, "")
    for bad in ("skip", "partial", "sometimes", "skip(x) y"):
        with pytest.raises(ValueError):
            parse_marker(bad)


def test_an_unmarked_broken_block_fails(tmp_path):
    """The check has teeth: a block that raises, or a shell line that fails, is a non-zero exit."""
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\nprint(undefined_name)\n```\n\n<!-- doc-test: skip (why) -->\n"
                   "```bash\nfalse\n```\n\n```bash\nfalse\necho after\n```\n")
    broken_py, skipped, broken_sh = extract(doc)
    assert broken_py.kinds == set() and skipped.kinds == {"skip"} and skipped.reason == "why"
    proc = run_block(broken_py, tmp_path)
    assert proc.returncode != 0 and "NameError" in proc.stderr
    proc = run_block(broken_sh, tmp_path)
    assert proc.returncode != 0 and "after" not in proc.stdout
