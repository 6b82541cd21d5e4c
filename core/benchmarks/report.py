"""What every ``pagedllm bench`` command shares: the machine's load, and writing results JSON."""
from __future__ import annotations

import json
import os
import platform


def load_avg() -> float | None:
    """1-minute load average: a busy shared machine slows every backend, so reports record it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def machine_info(device, load_before: float | None) -> dict:
    """What a result depends on besides the code: platform, cores and threads, torch, GPU, and the
    1-min load average before/after (a busy shared machine slows every backend)."""
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "load_avg_1m": [load_before, load_avg()],
    }


def write_json(report: dict, path: str | None) -> None:
    """Write ``report`` to ``path`` (folders created) and say so; nothing when ``path`` is None."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {path}")


def rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory in MiB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
