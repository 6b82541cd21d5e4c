"""``pythonic``: a Python list of calls, ``[get_weather(city="Paris"), get_time()]`` (Llama 3.2 and 4's
pythonic template, ToolACE). Arguments must be keyword literals; they are sent as a JSON object.

While streaming, the calls are reported once the list is complete (a Python call cannot be turned
into JSON text a piece at a time without guessing), so each call's arguments come in one fragment."""
from __future__ import annotations

import ast
import json

from pagedllm.tool_parsers.abstract import ParsedCall, ParsedOutput, ToolCallParseError, ToolParser


class PythonicToolParser(ToolParser):
    name = "pythonic"

    def parse(self, text: str, *, final: bool) -> ParsedOutput:
        source = text.strip()
        if not source:
            return ParsedOutput(text if final else "")
        if not source.startswith("["):
            return ParsedOutput(text)
        try:
            tree = ast.parse(source, mode="eval").body
        except SyntaxError:
            if final:
                raise ToolCallParseError("the answer starts with '[' but is not a Python list of calls") from None
            return ParsedOutput("")
        if not isinstance(tree, ast.List):
            raise ToolCallParseError("the answer is not a Python list of calls")
        return ParsedOutput("", [_call(node) for node in tree.elts])


def _call(node: ast.expr) -> ParsedCall:
    if not isinstance(node, ast.Call) or node.args:
        raise ToolCallParseError("each list item must be a call with keyword arguments only")
    try:
        name = ast.unparse(node.func)
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    except ValueError as exc:
        raise ToolCallParseError(f"a call argument is not a literal: {exc}") from None
    return ParsedCall(name, json.dumps(args), complete=True)
