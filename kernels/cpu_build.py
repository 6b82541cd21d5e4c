"""Compile a C kernel source at first use and load it with ctypes (the CPU kernels' shared plumbing).

Plain C with OpenMP (no torch headers) compiles in about a second with the machine's ``cc``;
the shared object is cached in ``~/.cache/pagedllm/kernels`` keyed by source (and the shared
``cpu_simd.h``), flags and CPU (``-march=native``). Without a compiler, or with ``PAGEDLLM_CPU_KERNEL=0``, ``load`` returns
None and each caller keeps its torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
_LIBS: dict[tuple[str, tuple[str, ...]], ctypes.CDLL | None] = {}


def _cache_dir() -> Path:
    root = os.environ.get("PAGEDLLM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pagedllm")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return "\n".join(line for line in text.splitlines() if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor() or platform.machine()


def build(source: Path, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile ``source`` (or reuse the cached build); raises RuntimeError if it cannot."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    flags = FLAGS + tuple(extra_flags)
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]  # included by the sources
    key = hashlib.sha256("\0".join([source.read_text(), *headers, compiler, *flags, _cpu_id()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, str(source), "-o", str(built), "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders never see a half-written file
    return target


def load(source: Path, declare: Callable[[ctypes.CDLL], None], fallback: str,
         extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled ``source`` with its signatures declared, or None (logged once, naming the
    ``fallback`` the caller takes) when it is disabled or cannot be built."""
    key = (str(source), tuple(extra_flags))
    if key in _LIBS:
        return _LIBS[key]
    lib = None
    if os.environ.get("PAGEDLLM_CPU_KERNEL", "1") != "0":
        try:
            lib = ctypes.CDLL(str(build(source, key[1])))
            declare(lib)
        except (RuntimeError, OSError) as exc:
            logger.warning("CPU kernel %s unavailable (%s); using %s", source.name, exc, fallback)
            lib = None
    _LIBS[key] = lib
    return lib
