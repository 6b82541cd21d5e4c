"""``llama3_json``: Llama 3.1/3.2's JSON calls, ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``),
optionally after ``<|python_tag|>``, several separated by ``;``. An answer that does not start with a
call object is plain content."""
from __future__ import annotations

from pagedllm.tool_parsers.abstract import ParsedOutput, ToolParser
from pagedllm.tool_parsers.json_calls import parse_call_sequence, skip_space

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def parse(self, text: str, *, final: bool) -> ParsedOutput:
        start = skip_space(text, 0)
        if text.startswith(PYTHON_TAG, start):
            start = skip_space(text, start + len(PYTHON_TAG))
        elif not final and PYTHON_TAG.startswith(text[start:]):
            return ParsedOutput("")  # nothing yet, or a tag still being written
        if start >= len(text):
            return ParsedOutput(text if final else "")
        if text[start] != "{":
            return ParsedOutput(text)
        return ParsedOutput("", parse_call_sequence(text, start, separators=";"))
