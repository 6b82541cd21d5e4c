"""Calls forced by ``tool_choice`` (``required`` or a named function): the grammar made the model write
one call object, or a JSON array of them, so reading them needs no guessing."""
from __future__ import annotations

from pagedllm.tool_parsers.abstract import ParsedOutput, ToolParser
from pagedllm.tool_parsers.json_calls import parse_call_sequence, skip_space


class ForcedToolParser(ToolParser):
    name = "forced"

    def parse(self, text: str, *, final: bool) -> ParsedOutput:
        start = skip_space(text, 0)
        if text.startswith("[", start):
            start += 1
        return ParsedOutput("", parse_call_sequence(text, start, separators=","))
