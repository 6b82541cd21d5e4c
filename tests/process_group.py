"""Stopping a server a test started in its own process group (``start_new_session=True``): SIGTERM
to the whole group, SIGKILL after 30 s, so no worker it spawned outlives the test."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
