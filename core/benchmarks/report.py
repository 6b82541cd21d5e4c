"""What every ``pagedllm bench`` command shares: the machine's load, and writing results JSON."""
from __future__ import annotations

import json
import os


def load_avg() -> float | None:
    """1-minute load average: a busy shared machine slows every backend, so reports record it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def write_json(report: dict, path: str | None) -> None:
    """Write ``report`` to ``path`` (folders created) and say so; nothing when ``path`` is None."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {path}")
