"""Streaming tool calls: re-parse the growing answer each step and send what is new, as OpenAI's
``tool_calls`` deltas (a call's id and name first, then fragments of its arguments text)."""
from __future__ import annotations

from pagedllm.tool_parsers.abstract import ParsedOutput, ToolCallParseError, ToolParser
from pagedllm.tool_parsers.ids import new_call_id


class ToolCallStream:
    def __init__(self, parser: ToolParser):
        self.parser = parser
        self.text = ""
        self.content_sent = 0
        self.ids: list[str] = []
        self.arguments_sent: list[int] = []
        self.broken = False  # the answer turned out not to be a valid call: the rest goes out as content

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def feed(self, delta: str, *, final: bool = False) -> tuple[str, list[dict]]:
        """Add ``delta``; return (new content, new tool-call deltas as OpenAI dicts)."""
        if not delta and not final:  # the detokenizer holding back a partial character: nothing new to parse
            return "", []
        self.text += delta
        if not self.broken:
            try:
                parsed = self.parser.parse(self.text, final=final)
                return self._content(parsed.content), self._calls(parsed)
            except ToolCallParseError:
                self.broken = True
        # not a valid call after all: at the end, the whole answer is content, unless calls already went out
        # (they cannot be taken back; the rest is dropped, however the text was chunked)
        return (self._content(self.text) if final and not self.ids else ""), []

    def _content(self, content: str) -> str:
        new = content[self.content_sent:]
        self.content_sent = max(self.content_sent, len(content))
        return new

    def _calls(self, parsed: ParsedOutput) -> list[dict]:
        deltas = []
        for index, call in enumerate(parsed.calls):
            if call.name is None:
                break
            function: dict = {}
            if index == len(self.ids):
                self.ids.append(new_call_id())
                self.arguments_sent.append(0)
                function["name"] = call.name
            new = call.arguments[self.arguments_sent[index]:]
            self.arguments_sent[index] = max(self.arguments_sent[index], len(call.arguments))
            if new or function:
                function["arguments"] = new
                delta = {"index": index, "function": function}
                if "name" in function:
                    delta |= {"id": self.ids[index], "type": "function"}
                deltas.append(delta)
        return deltas
