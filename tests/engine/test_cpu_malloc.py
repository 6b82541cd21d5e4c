"""keep_freed_memory: activation-sized blocks come from the heap and stay there when freed.

Each case runs in a fresh interpreter (mallopt settings are process-wide) and reads the size of the
process's ``[heap]`` mapping (/proc/self/maps) around a 16 MiB torch tensor. With glibc's defaults the
first such block is an mmap of its own (the initial mmap threshold is 128 KiB): the heap stays small,
and a freed mmap goes back to the OS, to be faulted in afresh next time. With the thresholds raised
the block is carved from the heap, and the heap keeps it after the free for the next step to reuse.
(Counting page faults instead was not repeatable: glibc's own dynamic threshold makes some rounds
reuse memory even with the defaults.) The defaults' case is the control."""
import os
import subprocess
import sys

import pytest

PROBE = """
import torch
from pagedllm.worker.cpu_malloc import keep_freed_memory
def heap_mib():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            return (end - start) >> 20
    return 0
applied = keep_freed_memory()
before = heap_mib()
t = torch.empty(4 << 20, dtype=torch.float32); t.fill_(1.0)
allocated = heap_mib()
del t
print(applied, allocated - before, heap_mib() - before)
"""


def run_probe(tuning: str) -> tuple[bool, int, int]:
    env = {**os.environ, "PAGEDLLM_CPU_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-P", "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, grown, kept = out.stdout.split()
    return applied == "True", int(grown), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc/self/maps: Linux only")
def test_activation_sized_blocks_come_from_the_heap_and_stay():
    off_applied, off_grown, off_kept = run_probe("0")
    on_applied, on_grown, on_kept = run_probe("1")
    assert not off_applied and off_grown < 16 and off_kept < 16  # the control: an mmap of its own
    assert on_applied and on_grown >= 16 and on_kept >= 16
