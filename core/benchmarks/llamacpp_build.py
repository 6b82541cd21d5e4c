"""Build llama.cpp's own tools from source, for peer benchmarks and real-world K-quant fixtures.

The llama-cpp-python sdist on PyPI vendors a pinned llama.cpp, so ``pip download`` gives the same
source on any machine with the registry and no extra tooling. The build (CMake, Release,
``GGML_NATIVE``) goes to a cache folder outside the repository,
``~/.cache/pagedllm/llama.cpp/<sdist version>/`` (``PAGEDLLM_LLAMACPP_CACHE`` moves the root), and
is reused when its binaries are there: nothing built is ever committed.
``PAGEDLLM_LLAMACPP_BIN`` points at a folder of ready binaries instead (a system llama.cpp).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SDIST = "llama-cpp-python"
# Built one after the other in this order (the quantizer first: the test fixtures need only it);
# llama-cli is left out: it links the whole server and adds nothing the benchmark measures.
TARGETS = ("llama-quantize", "llama-bench", "llama-server")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",          # this machine's SIMD (AVX2/AVX-512...): what a user building it gets
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no download at configure time
    "-DBUILD_SHARED_LIBS=OFF",   # self-contained binaries: nothing to put on LD_LIBRARY_PATH
)


def cache_root() -> Path:
    return Path(os.environ.get("PAGEDLLM_LLAMACPP_CACHE", Path.home() / ".cache" / "pagedllm" / "llama.cpp"))


def find_binary(name: str) -> Path | None:
    """The path of a built llama.cpp tool (``llama-quantize``, ...), or None when none is built.

    ``PAGEDLLM_LLAMACPP_BIN`` wins; otherwise the newest cached build that has it."""
    folder = os.environ.get("PAGEDLLM_LLAMACPP_BIN")
    if folder:
        path = Path(folder) / name
        return path if path.is_file() and os.access(path, os.X_OK) else None
    candidates = [Path(p) for p in glob.glob(str(cache_root() / "*" / "build" / "bin" / name))]
    candidates = [p for p in candidates if os.access(p, os.X_OK)]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def binary_version(path: Path) -> str:
    """The ``version: ...`` line of a llama.cpp binary's ``--version``
    (``version: 0.5.0-dev (build 1, commit 0c1e570)``)."""
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")]
    return lines[0] if lines else "unknown"


def _run(cmd: list[str], cwd: Path | None = None, nice: int = 0) -> None:
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def download_sdist(version: str | None, dest: Path) -> Path:
    """``pip download`` the sdist (never a wheel) into ``dest``; return the archive's path."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{SDIST}=={version}" if version else SDIST
    _run([sys.executable, "-m", "pip", "download", spec, "--no-binary", ":all:", "--no-deps", "-d", str(dest)])
    archives = sorted(dest.glob("llama_cpp_python-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not archives:
        raise RuntimeError(f"pip download left no llama_cpp_python-*.tar.gz in {dest}")
    if version:
        archives = [a for a in archives if a.name == f"llama_cpp_python-{version}.tar.gz"] or archives
    return archives[-1]


def source_dir(root: Path) -> Path:
    """The vendored llama.cpp inside an extracted sdist."""
    found = glob.glob(str(root / "llama_cpp_python-*" / "vendor" / "llama.cpp"))
    if not found:
        raise RuntimeError(f"no vendor/llama.cpp under {root}")
    return Path(found[0])


def source_commit(src: Path) -> str:
    """The vendored llama.cpp's commit, when the sdist kept its git metadata."""
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def build(version: str | None = None, jobs: int = 2, nice: int = 19,
          targets: tuple[str, ...] = TARGETS) -> dict:
    """Download (unless cached), configure and build ``targets``; return paths, version and timings.

    Reuses ``<cache>/<version>/build/bin`` when every target is there already. ``nice`` keeps the
    compile from starving a shared machine (0 disables it)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs!r}")
    root = cache_root()
    t0 = time.perf_counter()
    if version is None:
        archive = download_sdist(None, root / "dl")
        version = archive.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    here = root / version
    bin_dir = here / "build" / "bin"
    if all((bin_dir / t).is_file() for t in targets):
        print(f"llama.cpp tools already built in {bin_dir}", file=sys.stderr)
        return _summary(here, version, targets, built_s=0.0)
    if not glob.glob(str(here / "llama_cpp_python-*" / "vendor" / "llama.cpp")):
        archive = root / "dl" / f"llama_cpp_python-{version}.tar.gz"
        if not archive.is_file():
            archive = download_sdist(version, root / "dl")
        here.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(here, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(here)
    src = source_dir(here)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(here / "build"), *generator, *CMAKE_FLAGS], nice=nice)
    for target in targets:  # one at a time: each usable as soon as it is linked
        _run(["cmake", "--build", str(here / "build"), "--config", "Release", "-j", str(jobs),
              "--target", target], nice=nice)
    return _summary(here, version, targets, built_s=time.perf_counter() - t0)


def _summary(here: Path, version: str, targets, built_s: float) -> dict:
    bin_dir = here / "build" / "bin"
    src = source_dir(here)
    info = {
        "sdist": f"{SDIST}=={version}",
        "llama_cpp_commit": source_commit(src),
        "bin_dir": str(bin_dir),
        "binaries": {t: str(bin_dir / t) for t in targets if (bin_dir / t).is_file()},
        "build_s": round(built_s, 1),
    }
    if "llama-bench" in info["binaries"]:
        info["version"] = binary_version(bin_dir / "llama-bench")
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -P -m pagedllm.benchmarks.llamacpp_build [--version V] [-j N]``: build and print where."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", help=f"{SDIST} version to build (default: the newest on the registry)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel compile jobs (default: %(default)s)")
    p.add_argument("--nice", type=int, default=19, help="niceness of the compile (default: %(default)s)")
    args = p.parse_args(argv)
    print(json.dumps(build(args.version, args.jobs, args.nice), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
