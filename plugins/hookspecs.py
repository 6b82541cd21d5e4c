"""Hook specifications: the extension points a plugin may implement.

Each hook receives a ``register`` callable so a plugin can add several things at once
(the pattern of simonw/llm).
"""
import pluggy

hookspec = pluggy.HookspecMarker("pagedllm")
hookimpl = pluggy.HookimplMarker("pagedllm")


@hookspec
def register_models(register):
    """Register model classes: ``register(architecture_name, model_class)``.

    ``architecture_name`` is a value of a Hugging Face config's ``architectures``.
    """


@hookspec
def register_model_sources(register):
    """Register model sources: ``register(source)``.

    A source has ``name`` and ``resolve(model, *, revision, download_dir) -> str | None``
    returning a local path (folder or GGUF file) or ``None`` when it does not know the name.
    Sources are tried in registration order.
    """


@hookspec
def register_attention_backends(register):
    """Register attention backends: ``register(name, backend_class)``."""


@hookspec
def register_adapters(register):
    """Register framework adapters: ``register(name, module_path, requires=None)``.

    ``requires`` names the distribution the adapter plugs into (``langchain-core``); its installed
    version is shown by ``pagedllm plugins``. The module is imported only when a user imports it.
    """


@hookspec
def register_commands(subparsers):
    """Add sub-commands to the ``pagedllm`` CLI (an ``argparse`` subparsers object)."""


@hookspec
def register_tool_parsers(register):
    """Register tool-call parsers: ``register(name, parser_class)``, a ``pagedllm.tool_parsers.ToolParser``
    subclass; the server picks one with ``--tool-call-parser name``."""
