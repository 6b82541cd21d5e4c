"""What a tool-call parser returns, and the base class every parser (built-in or a plugin's) extends.

A parser reads the text a model wrote and splits it into plain content and function calls. It is
asked twice over: ``parse(text, final=False)`` on every streamed step (it must then only report what
can no longer change: content that cannot turn into a call, a call's name once complete, and the
arguments text written so far, each a prefix of its final value) and ``parse(text, final=True)`` once
at the end. Streaming (``stream.py``) sends the differences between steps, so the deltas a client
joins equal the whole answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class ToolCallParseError(ValueError):
    """The text starts like a call but is not a valid one: the answer is then plain content."""


@dataclass
class ParsedCall:
    name: str | None  # None until the name is written out completely
    arguments: str  # JSON text of the arguments object; while incomplete, a prefix of the final text
    complete: bool = False


@dataclass
class ParsedOutput:
    content: str  # text outside the calls (while streaming: the part that can no longer start a call)
    calls: list[ParsedCall] = field(default_factory=list)


class ToolParser:
    """Base of the parsers named by ``--tool-call-parser``; subclasses set ``name`` and implement ``parse``.

    Register one from a plugin with the ``register_tool_parsers`` hook (``plugins/hookspecs.py``)."""

    name: str = ""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def parse(self, text: str, *, final: bool) -> ParsedOutput:
        raise NotImplementedError

    def extract_tool_calls(self, text: str) -> ParsedOutput:
        """The finished answer: its calls, or all of it as content when it holds no valid call."""
        try:
            parsed = self.parse(text, final=True)
        except ToolCallParseError:
            return ParsedOutput(content=text)
        if any(not c.complete or c.name is None for c in parsed.calls):
            return ParsedOutput(content=text)
        return parsed


def held_back(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could be the start of ``marker`` (kept back while streaming)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
