"""pyproject's explicit package list covers every folder of Python modules (a wheel has only those)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_folder_is_a_listed_package():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {"pagedllm": "core", **setup["package-dir"]}
    found = set()
    for name, folder in mapped.items():
        for init in (ROOT / folder).rglob("*.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([name, *rel.parts]))
    found.add("pagedllm.kernels")  # core/kernels -> ../kernels: a namespace package, listed by hand
    assert sorted(found) == sorted(setup["packages"])
