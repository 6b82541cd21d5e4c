"""A tool-call parser registered by a plugin is listed, accepted by ``serve --tool-call-parser`` and used for
``tool_choice="auto"`` answers, streamed and whole, on the bundled model."""
from __future__ import annotations

import json

import pytest
from model_fixtures import BUNDLED

from pagedllm.plugins.hookspecs import hookimpl
from pagedllm.tool_parsers import ParsedCall, ParsedOutput, ToolParser, get_tool_parser, tool_parser_names


class ActionParser(ToolParser):
    """``ACTION name {json}`` (the example of docs/tool_calling.md)."""

    name = "action"

    def parse(self, text, *, final):
        if not text.startswith("ACTION "):
            return ParsedOutput(text if final or not "ACTION ".startswith(text) else "")
        name, _, args = text[len("ACTION "):].partition(" ")
        return ParsedOutput("", [ParsedCall(name, args.strip() if final else args, complete=final)]
                            if args or final else [])


class ActionPlugin:
    @hookimpl
    def register_tool_parsers(self, register):
        register("action", ActionParser)


def test_a_plugin_parser_is_used_for_auto(register_plugin):
    from pagedllm.entrypoints.cli import build_parser
    from pagedllm.entrypoints.openai.api_server import tool_flags_problem
    from pagedllm.integrations.openai import OpenAI

    flags = ["serve", "m", "--enable-auto-tool-choice", "--tool-call-parser", "action"]
    assert "action" in tool_flags_problem(build_parser().parse_args(flags))  # not registered yet: refused
    register_plugin(ActionPlugin(), "action-parser")
    assert "action" in tool_parser_names() and get_tool_parser("action") is ActionParser
    assert tool_flags_problem(build_parser().parse_args(flags)) is None

    client = OpenAI(BUNDLED, tool_call_parser="action", dtype="float32", max_model_len=2048, seed=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = []
    for prev in ["Berlin", "Oslo"]:
        messages += [{"role": "user", "content": f"What is the weather in {prev}?"},
                     {"role": "assistant", "content": f'ACTION get_weather {{"city": "{prev}"}}'},
                     {"role": "tool", "content": "12 C"}, {"role": "assistant", "content": f"12 C in {prev}."}]
    messages.append({"role": "user", "content": "What is the weather in Lima?"})
    request = dict(model=BUNDLED, messages=messages, tools=tools, temperature=0, max_tokens=32)
    message = client.chat.completions.create(**request).choices[0].message
    (call,) = message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Lima"})
    joined = "".join(d.function.arguments or "" for chunk in client.chat.completions.create(stream=True, **request)
                     for c in chunk.choices for d in c.delta.tool_calls or [])
    assert json.loads(joined) == {"city": "Lima"}


def test_registering_a_non_parser_is_a_type_error(register_plugin):
    class Bad:
        @hookimpl
        def register_tool_parsers(self, register):
            register("bad", object)

    register_plugin(Bad(), "bad-parser")
    with pytest.raises(TypeError, match="ToolParser"):
        tool_parser_names()
