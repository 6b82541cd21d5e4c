"""Every kernel variant compiles for a real GPU target (sm_90 / sm_80) even on a CPU machine.

Runs ``pagedllm.kernels.compile_check`` in a subprocess: that needs triton without
``TRITON_INTERPRET``, which this test session sets for the other kernel tests.
"""
import os
import subprocess
import sys

import pytest
import torch


def _compile_check(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # today's default, without the warning
    proc = subprocess.run([sys.executable, "-m", "pagedllm.kernels.compile_check", *args],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the other tests compile them")
def test_kernels_compile_for_h100_bf16():
    assert "kernel variants for sm_90" in _compile_check("--arch", "90", "--dtypes", "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["80", "90"])
def test_kernels_compile_all_dtypes(arch):
    assert f"kernel variants for sm_{arch}" in _compile_check("--arch", arch)
