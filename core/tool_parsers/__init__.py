"""Tool-call parsers (vLLM's ``--tool-call-parser``): built-ins ``hermes``, ``llama3_json`` and ``pythonic``,
more from plugins through the ``register_tool_parsers`` hook."""
from __future__ import annotations

from pagedllm.names import did_you_mean
from pagedllm.tool_parsers.abstract import ParsedCall, ParsedOutput, ToolCallParseError, ToolParser
from pagedllm.tool_parsers.forced import ForcedToolParser
from pagedllm.tool_parsers.stream import ToolCallStream

__all__ = ["ForcedToolParser", "ParsedCall", "ParsedOutput", "ToolCallParseError", "ToolCallStream", "ToolParser",
           "get_tool_parser", "tool_parser_names"]


def _registered() -> dict[str, type[ToolParser]]:
    from pagedllm.plugins.manager import load_plugins

    parsers: dict[str, type[ToolParser]] = {}

    def register(name: str, parser_class: type[ToolParser]) -> None:
        if not (isinstance(parser_class, type) and issubclass(parser_class, ToolParser)):
            raise TypeError(f"tool parser {name!r} must be a ToolParser subclass, got {parser_class!r}")
        parsers[name] = parser_class

    load_plugins().hook.register_tool_parsers(register=register)
    return parsers


def tool_parser_names() -> list[str]:
    return sorted(_registered())


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class registered as ``name`` (a ValueError listing the known ones otherwise)."""
    parsers = _registered()
    if name not in parsers:
        raise ValueError(f"tool_call_parser={name!r} is not a registered tool-call parser"
                         f"{did_you_mean(name, list(parsers))}; choose one of {sorted(parsers)}")
    return parsers[name]
