"""Kernel tests run the Triton kernels compiled on CUDA, or in Triton's CPU interpreter without it.

``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *decorated* (triton 3.x), so it is set
here, before any test module imports a kernel; kernel modules that something imported earlier
in this process (e.g. through the plugin manager) are re-imported so they pick it up.
Without CUDA the ``slow`` sweeps are skipped unless a ``-m`` expression selects them.
"""
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in [m for m in sys.modules if m.startswith("pagedllm.kernels.")]:
        importlib.reload(sys.modules[_name])

from paged_cases import DEVICE, WORST  # noqa: E402  (after the environment is set)

_HERE = Path(__file__).parent


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none found)")
    # The slow sweeps take many minutes in the CPU interpreter: run them only when asked
    # for by a marker expression (-m slow), not in a plain `pytest tests/kernels`.
    skip_slow = None if config.option.markexpr else pytest.mark.skip(
        reason="slow without CUDA (interpreter sweeps, compile matrix); select with -m slow")
    for item in items:
        if _HERE not in item.path.parents:
            continue
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        elif "slow" in item.keywords and skip_slow is not None:
            item.add_marker(skip_slow)


def pytest_terminal_summary(terminalreporter):
    if WORST:
        terminalreporter.write_line("worst relative error vs float64 reference (kernels):")
        for (kernel, dtype), err in sorted(WORST.items()):
            terminalreporter.write_line(f"  {kernel:<28} {dtype:<9} {err:.2e}")
