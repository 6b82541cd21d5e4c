"""Adapters are plugins: the built-ins are listed with versions, a registered mock adapter is found
through the hook, a third-party one comes from an entry point."""
from __future__ import annotations

import json

from pagedllm.plugins.hookspecs import hookimpl


def test_builtin_adapters_listed():
    from pagedllm.plugins.manager import get_adapters

    adapters = {a["name"]: a for a in get_adapters()}
    assert set(adapters) >= {"langchain", "langchain_embeddings", "llama_index", "llama_index_embedding", "openai"}
    assert adapters["langchain"]["module"] == "pagedllm.integrations.langchain"
    assert adapters["openai"]["requires"].startswith("openai==")


def test_builtin_embedding_adapters_import():
    import importlib

    from pagedllm.plugins.manager import get_adapters

    modules = {a["name"]: importlib.import_module(a["module"]) for a in get_adapters()}
    assert modules["langchain_embeddings"].VLLMEmbeddings is modules["langchain"].VLLMEmbeddings
    assert modules["llama_index_embedding"].VllmEmbedding.class_name() == "pagedllm_VllmEmbedding"


class MockAdapters:
    """A plugin whose hook function has another name (``specname``): only pluggy knows it is the hook."""

    @hookimpl(specname="register_adapters")
    def adapters(self, register):
        register("mock", "tests.mock_adapter", requires="pluggy")


def test_mock_adapter_registered_later_is_listed(register_plugin):
    from importlib.metadata import version

    from pagedllm.plugins.manager import get_adapters, get_plugins

    assert "mock" not in {a["name"] for a in get_adapters()}
    plugin = register_plugin(MockAdapters(), "mock-adapters")
    mock = {"name": "mock", "module": "tests.mock_adapter", "requires": f"pluggy=={version('pluggy')}"}
    assert mock in get_adapters()
    assert get_adapters(plugin) == [mock]  # one plugin's adapters: this one's, none of the built-ins'
    listed = {p["name"]: p for p in get_plugins()}
    assert listed["mock-adapters"]["adapters"] == [mock]
    assert "adapters" not in listed["pagedllm.plugins.builtin_models"]


def test_third_party_adapter_from_entry_point(installed_plugin, monkeypatch, capsys):
    """A temporary distribution (dist-info + entry_points.txt on sys.path) registers an adapter."""
    installed_plugin("pagedllm_haystack", """
        from pagedllm.plugins.hookspecs import hookimpl

        @hookimpl
        def register_adapters(register):
            register("haystack", "pagedllm_haystack")
    """, version="0.3.1")
    monkeypatch.delenv("PAGEDLLM_LOAD_PLUGINS", raising=False)
    from pagedllm.plugins import manager

    plugins = {p["name"]: p for p in manager.get_plugins()}
    assert plugins["pagedllm_haystack"]["version"] == "0.3.1"
    assert plugins["pagedllm_haystack"]["adapters"] == [{"name": "haystack", "module": "pagedllm_haystack"}]
    from pagedllm.entrypoints.cli import main

    assert main(["plugins"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["pagedllm_haystack"]["adapters"][0]["name"] == "haystack"
