"""keep_freed_memory: a freed activation-sized block is reused instead of page-faulted again.

Each case runs in a fresh interpreter (mallopt settings are process-wide): allocate and fill 16 MiB
twice with torch and count the minor page faults of the second time (getrusage). With glibc's
defaults the block is a fresh mmap each time (~4,096 faults of 4 KiB pages); with the thresholds
raised the heap hands the same pages back (nearly none). The defaults' case is the control that
shows the measurement can tell the two apart."""
import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from pagedllm.worker.cpu_malloc import keep_freed_memory
applied = keep_freed_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(4 << 20, dtype=torch.float32); t.fill_(1.0); del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(applied, faults())
"""


def run_probe(tuning: str) -> tuple[bool, int]:
    env = {**os.environ, "PAGEDLLM_CPU_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-P", "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_block_is_reused_instead_of_faulted_again():
    off_applied, off_faults = run_probe("0")
    on_applied, on_faults = run_probe("1")
    assert not off_applied and off_faults > 3000  # 16 MiB of fresh pages (the control)
    assert on_applied and on_faults < 100
