"""The repository root never shadows an installed distribution (issue 16).

A user's script or notebook in the repository root has the root first on ``sys.path``; so does
``python -m`` run from there. transformers >= 5.x imports Hugging Face's ``kernels``
distribution, and a top-level ``kernels/`` regular package in the root used to win over it
(``ImportError: cannot import name 'CUDAProperties' from 'kernels'``). ``python -c`` from the
root reproduces exactly what such a script sees.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_fixtures import hf_greedy, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def run_from_root(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in the repository root: the root is then on sys.path, as for a script there."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def in_repo_folder(origin: str, name: str) -> bool:
    """True when a module's file is the repo's own top-level ``name`` (folder or module), not an installed one."""
    path = Path(origin).resolve()
    return path.is_relative_to(ROOT / name) or path == ROOT / f"{name}.py"


def test_transformers_hub_kernels_imports_from_repo_root():
    code = ("import sys, importlib.util\n"
            f"assert sys.path[0] in ('', {str(ROOT)!r}), sys.path[:2]\n"
            "import transformers.integrations.hub_kernels\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "print(spec.origin if spec else '')\n")
    proc = run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin = proc.stdout.strip().splitlines()[-1]
    # Either no `kernels` distribution is installed, or the import finds that distribution's files.
    assert origin == "" or not in_repo_folder(origin, "kernels"), origin


def test_no_installed_top_level_name_resolves_into_the_repo():
    """Every top-level module an installed distribution provides still resolves to it from the root.

    Guards the next release that ships a top-level name equal to one of this repo's folders.
    """
    code = ("import importlib.metadata as md, importlib.util, json, os\n"
            "names = sorted(n for n in md.packages_distributions() if os.path.exists(n) or os.path.exists(n + '.py'))\n"
            "out = {}\n"
            "for n in names:\n"
            "    spec = importlib.util.find_spec(n)\n"
            "    out[n] = (spec.origin, list(spec.submodule_search_locations or [])) if spec else None\n"
            "print(json.dumps(out))\n")
    proc = run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    clashes = json.loads(proc.stdout.strip().splitlines()[-1])
    if "kernels" in _installed_top_level_names():
        assert "kernels" in clashes  # the case that broke: the distribution vs the kernels/ folder
    for name, found in clashes.items():
        assert found is not None, name
        origin, locations = found
        assert origin is not None, f"{name!r} resolves to the repo folder as a namespace: {locations}"
        assert not in_repo_folder(origin, name), f"{name!r} resolves to {origin}"


def _installed_top_level_names() -> set[str]:
    import importlib.metadata as md

    return set(md.packages_distributions())


def test_no_top_level_folder_is_a_regular_package_but_core_plugins_integrations():
    """Only the folders whose names no dependency ships may hold an __init__.py."""
    regular = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert "kernels" not in regular
    assert set(regular) <= {"core", "plugins", "integrations"}, regular


def test_pagedllm_imports_and_generates_from_repo_root(tmp_path):
    """From the root, as a user's script: pagedllm loads a model and its greedy tokens match transformers'."""
    path = make_tiny_model(tmp_path / "tiny")
    code = ("import json\n"
            "from pagedllm import LLM, SamplingParams\n"
            "import pagedllm.kernels.cpu_decode\n"
            f"llm = LLM(model={str(path)!r}, dtype='float32', kv_cache_memory=64 << 20)\n"
            "out = llm.generate(['Hello, my name is'], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))\n"
            "print(json.dumps({'prompt': out[0].prompt_token_ids, 'tokens': list(out[0].outputs[0].token_ids)}))\n")
    proc = run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert result["tokens"] == hf_greedy(model, result["prompt"], 8)


def test_the_test_run_itself_has_no_repo_root_on_sys_path():
    """`make test` runs pytest's console script; `python -m pytest` would put the root first."""
    entries = {Path(p or os.getcwd()).resolve() for p in sys.path}
    assert ROOT not in entries, [p for p in sys.path if Path(p or os.getcwd()).resolve() == ROOT]


@pytest.mark.parametrize("module", ["pagedllm.kernels", "pagedllm.kernels.cpu_build"])
def test_kernels_are_importable_as_pagedllm_kernels(module):
    import importlib

    mod = importlib.import_module(module)
    assert mod.__name__ == module
