"""Fixtures for plugin tests: register a plugin for one test, a throw-away installed distribution."""
from __future__ import annotations

import sys
import textwrap

import pytest


@pytest.fixture
def register_plugin():
    """``register_plugin(obj, name)`` adds a plugin to the manager; it is unregistered after the test."""
    from pagedllm.plugins.manager import load_plugins

    pm = load_plugins()
    names = []

    def register(plugin, name: str):
        pm.register(plugin, name=name)
        names.append(name)
        return plugin

    yield register
    for name in names:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """``installed_plugin(name, source, version)``: a distribution on sys.path whose ``pagedllm``
    entry point ``name`` is the module ``source``; the manager is reset to load entry points again
    and the plugin is unregistered after the test."""
    from pagedllm.plugins import manager

    installed = []

    def install(name: str, source: str, version: str = "0.1.0") -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{name}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        (dist / "entry_points.txt").write_text(f"[pagedllm]\n{name} = {name}\n")
        installed.append(name)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(manager, "_loaded", False)
    yield install
    for name in installed:
        if manager.pm.get_plugin(name) is not None:
            manager.pm.unregister(name=name)
        sys.modules.pop(name, None)
