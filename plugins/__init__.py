"""pluggy-based plugin system: hook specs, the manager and the built-in plugins."""
from pagedllm.plugins.hookspecs import hookimpl, hookspec
from pagedllm.plugins.manager import get_plugins, pm

__all__ = ["hookimpl", "hookspec", "pm", "get_plugins"]
