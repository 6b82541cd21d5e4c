"""docs/vllm_arguments.md is true: each vLLM argument there acts ("works"), warns once naming itself ("no effect on
CPU"), or is refused in one line naming itself and what to use ("refused"), through the real ``pagedllm serve``
parser and ``EngineConfig.from_kwargs`` (what ``LLM(...)`` builds). No model is loaded: the parse and the config
are where these answers are given (``warn_without_effect`` is what the engine calls at start)."""
from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest
import torch

from pagedllm import config as config_module
from pagedllm.config import EngineConfig, warn_without_effect
from pagedllm.entrypoints.cli import build_parser
from pagedllm.entrypoints.cli_args import engine_args_problem, engine_kwargs

TABLE = Path(__file__).resolve().parents[2] / "docs" / "vllm_arguments.md"
STATUSES = ("works", "no effect on CPU", "refused")
CPU = torch.device("cpu")


def rows() -> list[tuple[str, str, str, str]]:
    """``(argument, example flags, status, why)`` for each table row."""
    found = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        argument, example, status, why = cells[0].strip("`"), cells[1].strip("`"), cells[2], cells[3]
        found.append((argument, example, status, why))
    return found


ROWS = rows()


def test_the_table_has_rows_of_each_status():
    counts = {s: sum(r[2] == s for r in ROWS) for s in STATUSES}
    assert len(ROWS) == sum(counts.values()), [r for r in ROWS if r[2] not in STATUSES]
    assert all(counts.values()), counts
    assert {"disable_custom_all_reduce", "device", "gpu_memory_utilization", "api_key"} <= {r[0] for r in ROWS}


@pytest.mark.parametrize("argument,example,status,why", ROWS, ids=[f"{r[0]}:{r[1].split()[-1]}" for r in ROWS])
def test_row(argument, example, status, why, monkeypatch, caplog):
    if argument == "device" and "cuda" in example and torch.cuda.is_available():
        pytest.skip("the table's CPU-only answer; on this machine --device cuda works")
    monkeypatch.setattr(config_module, "_warned", set())
    flags = shlex.split(example)
    assert flags[0].replace("-", "_").strip("_") == argument, "the example is the argument's own flag"
    args = build_parser().parse_args(["serve", "some/model", *flags])  # an unknown flag would exit here
    assert hasattr(args, argument)
    kwargs = engine_kwargs(args, model=args.model or "some/model")
    problem = engine_args_problem(args)  # what `pagedllm serve` checks before it starts
    if status == "refused":
        assert problem and argument in problem and " use " in problem, problem
        assert "\n" not in problem
        with pytest.raises(ValueError, match=argument):  # LLM(**kwargs) raises the same
            EngineConfig.from_kwargs(**kwargs)
        return
    assert problem is None, problem
    config = EngineConfig.from_kwargs(**kwargs)
    warn_without_effect(config, CPU)
    warn_without_effect(config, CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if status == "works":
        assert warnings == []
    else:
        (message,) = warnings  # once, however often the engine starts
        assert message.startswith(f"{argument}=") and "no effect" in message


def test_the_check_can_fail(monkeypatch, caplog):
    """A 'works' row that warned, or a 'refused' row that started, would be caught: the same steps see both."""
    monkeypatch.setattr(config_module, "_warned", set())
    warn_without_effect(EngineConfig.from_kwargs("m", swap_space=8), CPU)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert engine_args_problem(build_parser().parse_args(["serve", "m", "-tp", "1"])) is None
