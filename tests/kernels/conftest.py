"""Kernel tests run the Triton kernels compiled on CUDA, or in Triton's CPU interpreter without it.

``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *decorated* (triton 3.x), so it is set
here, before any test module imports a kernel; kernel modules that something imported earlier
in this process (e.g. through the plugin manager) are re-imported so they pick it up.
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
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords and _HERE in item.path.parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if WORST:
        terminalreporter.write_line("worst relative error vs float64 reference (kernels):")
        for (kernel, dtype), err in sorted(WORST.items()):
            terminalreporter.write_line(f"  {kernel:<28} {dtype:<9} {err:.2e}")
