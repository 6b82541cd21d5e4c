"""The CPU KV cache's host memory: zeroed, and a private anonymous mapping (not shmem)."""
import sys

import pytest
import torch

from pagedllm.worker.cache_engine import _zeroed_host_tensor


def _mapping_of(address: int) -> str:
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                return line
    raise AssertionError(f"no mapping holds {address:#x}")


def test_host_cache_is_zeroed_and_writable():
    cache = _zeroed_host_tensor((2, 3, 5, 16, 2, 8), torch.bfloat16)
    assert cache.shape == (2, 3, 5, 16, 2, 8) and cache.dtype == torch.bfloat16
    assert not cache.any()
    cache[1, 2, 4].fill_(1.5)
    assert cache.sum().item() == 1.5 * 16 * 2 * 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux only)")
def test_host_cache_is_a_private_anonymous_mapping():
    """MAP_SHARED anonymous memory is shmem: dearer faults, and memory advice that does not apply."""
    cache = _zeroed_host_tensor((1 << 20,), torch.bfloat16)
    line = _mapping_of(cache.data_ptr())
    perms = line.split()[1]
    assert perms.startswith("rw") and perms[3] == "p", line  # 'p' private, 's' shared
    assert "/dev/zero" not in line and "SYSV" not in line, line
