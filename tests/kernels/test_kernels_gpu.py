"""GPU-only checks: the benchmark script runs, and decode attention is not far off the copy
bandwidth (a floor that catches a pathological kernel, not a performance target)."""
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bench_kernels_quick(capsys):
    from pagedllm.kernels.bench_kernels import main

    main(["--quick"])
    out = capsys.readouterr().out
    assert "copy" in out and "triton decode" in out


def test_decode_bandwidth_floor():
    from pagedllm.kernels.bench_kernels import copy_bandwidth, run

    copy = copy_bandwidth()
    rows = run(64, 2048, 32, 8, 128, 16, torch.bfloat16, with_reference=False)
    assert rows[0]["gbps"] > 0.3 * copy, (rows, copy)
