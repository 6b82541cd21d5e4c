"""Reading ``{"name": ..., "arguments": {...}}`` call objects, whole or as a growing prefix.

Shared by the JSON-based parsers (hermes, llama3_json) and by forced calls (``tool_choice``
``required`` or a named function). The arguments are reported as the exact text the model wrote, so
the streamed fragments join to the same string as the whole answer's.
"""
from __future__ import annotations

import json
import re

from pagedllm.tool_parsers.abstract import ParsedCall, ToolCallParseError

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')  # llama3 writes "parameters"
_DECODER = json.JSONDecoder()


def skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _decode(text: str, pos: int) -> tuple[object, int | None]:
    """The JSON value at ``pos`` and its end, or (None, None) while it is incomplete."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        return None, None


def _value_end(text: str, pos: int) -> int | None:
    """End of the JSON value at ``pos``, or None while it is incomplete."""
    return _decode(text, pos)[1]


def parse_call_object(text: str, pos: int) -> tuple[ParsedCall, int | None]:
    """The call object at ``text[pos]`` (a ``{``): ``(call, end)`` once complete, ``(partial call, None)`` before."""
    obj, end = _decode(text, pos)
    if end is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ToolCallParseError(f"not a tool call object: {text[pos:end][:80]!r}")
        args = obj.get("arguments", obj.get("parameters", {}))
        if not isinstance(args, dict):
            raise ToolCallParseError(f"the arguments of {obj['name']!r} are not a JSON object")
        found = _ARGUMENTS.search(text, pos, end)
        if found and text.startswith("{", found.end()):
            args_text = text[found.end():_value_end(text, found.end())]
        else:  # no arguments written: an empty object
            args_text = json.dumps(args)
        return ParsedCall(obj["name"], args_text, complete=True), end
    found = _ARGUMENTS.search(text, pos)
    name = _NAME.search(text, pos, found.start() if found else len(text))
    args_text = ""
    if found and text.startswith("{", found.end()):
        args_end = _value_end(text, found.end())
        args_text = text[found.end():args_end]  # args_end None: all written so far
    return ParsedCall(json.loads(f'"{name.group(1)}"') if name else None, args_text), None


def parse_call_sequence(text: str, pos: int, separators: str) -> list[ParsedCall]:
    """Call objects from ``pos`` on, separated by any of ``separators`` (and spaces); stops at other text."""
    calls = []
    while True:
        pos = skip_space(text, pos)
        if pos >= len(text) or text[pos] != "{":
            return calls
        call, end = parse_call_object(text, pos)
        calls.append(call)
        if end is None:
            return calls
        pos = skip_space(text, end)
        if pos < len(text) and text[pos] in separators:
            pos += 1
        else:
            return calls
