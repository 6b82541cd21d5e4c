"""``hermes``: calls wrapped in ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen2.5,
Qwen3 and most ChatML tool templates); the text before the first tag is the content."""
from __future__ import annotations

from pagedllm.tool_parsers.abstract import ParsedOutput, ToolCallParseError, ToolParser, held_back
from pagedllm.tool_parsers.json_calls import parse_call_object, skip_space

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"

    def parse(self, text: str, *, final: bool) -> ParsedOutput:
        first = text.find(START)
        if first < 0:
            return ParsedOutput(text if final else text[:len(text) - held_back(text, START)])
        out = ParsedOutput(text[:first])
        pos = first
        while (pos := text.find(START, pos)) >= 0:
            start = skip_space(text, pos + len(START))
            if start >= len(text):
                break
            if text[start] != "{":
                raise ToolCallParseError(f"{START} is not followed by a JSON object")
            call, end = parse_call_object(text, start)
            out.calls.append(call)
            if end is None:
                break
            pos = end
        return out
