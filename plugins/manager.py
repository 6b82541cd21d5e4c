"""The plugin manager: built-in plugins by module name, third-party ones by entry point."""
import importlib
import os

import pluggy

from pagedllm.plugins import hookspecs

# Built-in plugins, registered in this order (model sources are tried in it too).
DEFAULT_PLUGINS = (
    "pagedllm.plugins.builtin_models",
    "pagedllm.plugins.builtin_sources",
    "pagedllm.plugins.builtin_attention",
    "pagedllm.plugins.builtin_adapters",
    "pagedllm.plugins.builtin_tool_parsers",
)

ENTRY_POINT_GROUP = "pagedllm"
# PAGEDLLM_LOAD_PLUGINS="" loads no third-party plugin; "a,b" loads only those entry points;
# unset loads them all. tests/conftest.py sets it to "" so installed plugins stay out of test runs.
LOAD_PLUGINS_ENV = "PAGEDLLM_LOAD_PLUGINS"

pm = pluggy.PluginManager("pagedllm")
pm.add_hookspecs(hookspecs)

_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register entry-point plugins and the built-ins, once per process."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    elif wanted.strip():
        from importlib.metadata import entry_points

        names = {n.strip() for n in wanted.split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in names and pm.get_plugin(ep.name) is None:
                pm.register(ep.load(), name=ep.name)
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    return pm


def get_plugins() -> list[dict]:
    """Describe loaded plugins: name, implemented hooks and, for installed ones, version."""
    load_plugins()
    dist_info = {plugin: dist for plugin, dist in pm.list_plugin_distinfo()}
    plugins = []
    for plugin in pm.get_plugins():
        info = {
            "name": pm.get_name(plugin),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        dist = dist_info.get(plugin)
        if dist is not None:
            info["version"] = dist.version
        adapters = get_adapters(plugin)
        if adapters:
            info["adapters"] = adapters
        plugins.append(info)
    return sorted(plugins, key=lambda p: p["name"])


def get_adapters(plugin=None) -> list[dict]:
    """Registered adapters (of one plugin, or all): name, module and the adapted framework's version."""
    from importlib.metadata import PackageNotFoundError, version

    load_plugins()
    found = []

    def register(name: str, module_path: str, requires: str | None = None) -> None:
        entry = {"name": name, "module": module_path}
        if requires:
            try:
                entry["requires"] = f"{requires}=={version(requires)}"
            except PackageNotFoundError:
                entry["requires"] = f"{requires} (not installed)"
        found.append(entry)

    if plugin is None:
        hook = pm.hook.register_adapters
    else:  # the same hook, called on this one plugin only
        hook = pm.subset_hook_caller("register_adapters", [p for p in pm.get_plugins() if p is not plugin])
    hook(register=register)
    return found
