"""Tool-call parsers on recorded model outputs (the formats of Hermes/Qwen2.5, Llama 3.1/3.2 JSON and Llama
3.2/4 pythonic answers): whole answers, and the same answers streamed in every chunking, whose joined
deltas must equal the whole answer's calls (checked through the OpenAI SDK's own delta types)."""
from __future__ import annotations

import json

import pytest
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from pagedllm.tool_parsers import ForcedToolParser, ToolCallStream, get_tool_parser, tool_parser_names

HERMES = ('I will look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
          '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n'
          '</tool_call>')
LLAMA3 = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "San Francisco", "days": [1, 2]}}; '
          '{"name": "get_time", "parameters": {}}')
PYTHONIC = '[get_weather(city="San Francisco", metric=True, hours=[6, 12]), get_time()]'
FORCED = '[{"name":"add","arguments":{"a":1,"b":{"c":"}"}}},{"name":"sub","arguments":{}}]'

CASES = [  # parser, answer, content, [(name, arguments object)]
    ("hermes", HERMES, "I will look that up.\n",
     [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "Europe/Paris"})]),
    ("llama3_json", LLAMA3, "", [("get_weather", {"city": "San Francisco", "days": [1, 2]}), ("get_time", {})]),
    ("pythonic", PYTHONIC, "",
     [("get_weather", {"city": "San Francisco", "metric": True, "hours": [6, 12]}), ("get_time", {})]),
]


def _parser(name):
    return ForcedToolParser() if name == "forced" else get_tool_parser(name)()


def test_builtins_are_registered():
    assert {"hermes", "llama3_json", "pythonic"} <= set(tool_parser_names())
    with pytest.raises(ValueError, match="hermes"):  # the known ones are listed
        get_tool_parser("hermez")


@pytest.mark.parametrize("name, answer, content, calls", CASES + [
    ("forced", FORCED, "", [("add", {"a": 1, "b": {"c": "}"}}), ("sub", {})])])
def test_whole_answer(name, answer, content, calls):
    parsed = _parser(name).extract_tool_calls(answer)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls


@pytest.mark.parametrize("name, answer", [
    ("hermes", "The weather is fine."),  # no call: all content
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"x": 1}\n</tool_call>'),  # broken JSON
    ("hermes", '<tool_call>\n{"arguments": {"x": 1}}\n</tool_call>'),  # no name
    ("llama3_json", 'Sure: {"name": "f", "parameters": {}}'),  # not at the start
    ("llama3_json", '{"name": "f", "parameters": "x=1"}'),  # arguments not an object
    ("pythonic", "[1, 2, 3]"),  # not calls
    ("pythonic", "[f(1)]"),  # positional arguments
    ("pythonic", "[f(x=y)]"),  # not a literal
    ("pythonic", "[f(x=1"),  # cut off
])
def test_invalid_answers_are_content(name, answer):
    parsed = _parser(name).extract_tool_calls(answer)
    assert parsed.calls == [] and parsed.content == answer


def _streamed(parser, answer: str, size: int):
    stream = ToolCallStream(parser)
    content, calls = "", {}
    pieces = [answer[i:i + size] for i in range(0, len(answer), size)] + [""]
    for k, piece in enumerate(pieces):
        text, deltas = stream.feed(piece, final=k == len(pieces) - 1)
        content += text
        for d in deltas:
            delta = ChoiceDeltaToolCall.model_validate(d)  # OpenAI's own type for a streamed call
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert call["id"] is None, "the id comes once, with the name"
                call["id"], call["name"] = delta.id, delta.function.name
            call["arguments"] += delta.function.arguments or ""
    return content, calls


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("name, answer, content, calls", CASES + [
    ("forced", FORCED, "", [("add", {"a": 1, "b": {"c": "}"}}), ("sub", {})]),
    ("hermes", "No tools needed here <tool but a tag-like text.", "No tools needed here <tool but a tag-like text.",
     [])])
def test_streaming_joins_to_the_whole_answer(name, answer, content, calls, size):
    parser = _parser(name)
    streamed_content, streamed = _streamed(parser, answer, size)
    whole = parser.extract_tool_calls(answer)
    assert streamed_content == whole.content == content
    assert [streamed[i]["arguments"] for i in sorted(streamed)] == [c.arguments for c in whole.calls]
    assert [(streamed[i]["name"], json.loads(streamed[i]["arguments"])) for i in sorted(streamed)] == calls
    assert all(streamed[i]["id"].startswith("call_") for i in streamed)


@pytest.mark.parametrize("name, answer", [
    ("hermes", '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>x'),  # a call, then garbage
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"x": 1}\n</tool_call>'),  # broken from the start
    ("pythonic", "[f(x=1"),
])
def test_broken_answers_stream_alike_however_chunked(name, answer):
    """An answer that turns out invalid: if a call already went out it cannot be taken back, and nothing
    follows it (not the whole text again as content); if none did, all of it is content, as unstreamed.
    Which of the two does not depend on where the chunks fall, only on whether a call was complete first."""
    whole = _parser(name).extract_tool_calls(answer)
    assert whole.calls == [] and whole.content == answer
    for size in (1, 2, 5, len(answer) - 1, len(answer)):
        content, calls = _streamed(_parser(name), answer, size)
        assert content == ("" if calls else answer), (size, content, calls)
        assert all(c["name"] == "f" for c in calls.values()), size  # what went out before the answer broke


def test_streamed_arguments_arrive_in_fragments():
    """JSON-based parsers send arguments as they are written, not at the end."""
    stream = ToolCallStream(get_tool_parser("hermes")())
    seen = []
    for ch in HERMES:
        _, deltas = stream.feed(ch)
        seen += [d["function"]["arguments"] for d in deltas if d["function"].get("arguments")]
    assert len(seen) > 10 and "".join(seen).startswith('{"city": "Paris"')
