"""PAGEDLLM_LOAD_PLUGINS decides which installed plugins load; the test run loads none of them."""
from __future__ import annotations

import os

import pytest

PLUGIN = """
    from pagedllm.plugins.hookspecs import hookimpl

    @hookimpl
    def register_adapters(register):
        register("{name}", "{name}")
"""


def _loaded_names() -> set[str]:
    from pagedllm.plugins.manager import load_plugins

    pm = load_plugins()
    return {pm.get_name(p) for p in pm.get_plugins()}


def test_the_test_run_keeps_installed_plugins_out():
    from pagedllm.plugins.manager import DEFAULT_PLUGINS, LOAD_PLUGINS_ENV

    if os.environ.get(LOAD_PLUGINS_ENV):
        pytest.skip(f"{LOAD_PLUGINS_ENV} names plugins to load in this run")
    assert os.environ[LOAD_PLUGINS_ENV] == ""  # set by tests/conftest.py
    assert _loaded_names() == set(DEFAULT_PLUGINS)


def test_empty_loads_no_entry_point(installed_plugin, monkeypatch):
    installed_plugin("pagedllm_unwanted", PLUGIN.format(name="unwanted"))
    monkeypatch.setenv("PAGEDLLM_LOAD_PLUGINS", "")
    assert "pagedllm_unwanted" not in _loaded_names()


def test_unset_loads_every_entry_point(installed_plugin, monkeypatch):
    installed_plugin("pagedllm_one", PLUGIN.format(name="one"))
    installed_plugin("pagedllm_two", PLUGIN.format(name="two"))
    monkeypatch.delenv("PAGEDLLM_LOAD_PLUGINS", raising=False)
    assert {"pagedllm_one", "pagedllm_two"} <= _loaded_names()


def test_a_list_loads_only_the_named(installed_plugin, monkeypatch):
    installed_plugin("pagedllm_one", PLUGIN.format(name="one"))
    installed_plugin("pagedllm_two", PLUGIN.format(name="two"))
    monkeypatch.setenv("PAGEDLLM_LOAD_PLUGINS", " pagedllm_two, ")
    names = _loaded_names()
    assert "pagedllm_two" in names and "pagedllm_one" not in names
