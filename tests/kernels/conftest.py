"""Kernel tests run the Triton kernels compiled on CUDA, or in Triton's CPU interpreter without it.

``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *decorated* (triton 3.x), so it is set
here, before any test module imports a kernel; kernel modules that something imported earlier
in this process (e.g. through the plugin manager) are re-imported so they pick it up. Triton
itself must not be imported before this file runs (its own jit library, ``tl.max`` etc., would be
compiled-mode and unusable from interpreted kernels); that is checked.
"""
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    _tl = sys.modules.get("triton.language")
    if _tl is not None and type(_tl.standard.max).__name__ != "InterpretedFunction":
        # triton's own jit library (tl.max, tl.sum, ...) was decorated compiled; interpreted
        # kernels cannot call it. Set the variable before anything imports triton.
        raise RuntimeError(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
            "run with TRITON_INTERPRET=1 in the environment (or set it in tests/conftest.py)")
    for _name in [m for m in sys.modules if m.startswith("pagedllm.kernels.")]:
        importlib.reload(sys.modules[_name])

from paged_cases import DEVICE, WORST  # noqa: E402  (after the environment is set)

_HERE = Path(__file__).parent


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    """The slow sweeps take many minutes in the CPU interpreter: without CUDA they run only when
    a marker expression asks (``-m slow``), not in a plain ``pytest tests/kernels``. (The root
    conftest skips ``gpu`` tests without CUDA.)"""
    if torch.cuda.is_available() or config.option.markexpr:
        return
    skip_slow = pytest.mark.skip(
        reason="slow without CUDA (interpreter sweeps, compile matrix); select with -m slow")
    for item in items:
        if "slow" in item.keywords and _HERE in item.path.parents:
            item.add_marker(skip_slow)


def pytest_terminal_summary(terminalreporter):
    if WORST:
        terminalreporter.write_line("worst relative error vs float64 reference (kernels):")
        for (kernel, dtype), err in sorted(WORST.items()):
            terminalreporter.write_line(f"  {kernel:<28} {dtype:<9} {err:.2e}")
