"""Adapters are plugins: the built-ins are listed with versions, a third-party one comes from an entry point."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest


def test_builtin_adapters_listed():
    from pagedllm.plugins.manager import get_adapters

    adapters = {a["name"]: a for a in get_adapters()}
    assert set(adapters) >= {"langchain", "llama_index", "openai"}
    assert adapters["langchain"]["module"] == "pagedllm.integrations.langchain"
    assert adapters["openai"]["requires"].startswith("openai==")


def test_third_party_adapter_from_entry_point(tmp_path, monkeypatch, capsys):
    """A temporary distribution (dist-info + entry_points.txt on sys.path) registers an adapter."""
    (tmp_path / "pagedllm_haystack.py").write_text(textwrap.dedent("""
        from pagedllm.plugins.hookspecs import hookimpl

        @hookimpl
        def register_adapters(register):
            register("haystack", "pagedllm_haystack")
    """))
    dist = tmp_path / "pagedllm_haystack-0.3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pagedllm-haystack\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[pagedllm]\nhaystack = pagedllm_haystack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PAGEDLLM_LOAD_PLUGINS", raising=False)
    from pagedllm.plugins import manager

    monkeypatch.setattr(manager, "_loaded", False)
    try:
        plugins = {p["name"]: p for p in manager.get_plugins()}
        assert plugins["haystack"]["version"] == "0.3.1"
        assert plugins["haystack"]["adapters"] == [{"name": "haystack", "module": "pagedllm_haystack"}]
        from pagedllm.entrypoints.cli import main

        assert main(["plugins"]) == 0
        listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
        assert listed["haystack"]["adapters"][0]["name"] == "haystack"
    finally:
        plugin = manager.pm.get_plugin("haystack")
        if plugin is not None:
            manager.pm.unregister(plugin)
        sys.modules.pop("pagedllm_haystack", None)
