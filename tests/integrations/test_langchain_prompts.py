"""How ChatVLLM presents tools and schemas to the model and constrains its JSON (no model loaded)."""
from __future__ import annotations

import json

from pydantic import BaseModel, Field

from pagedllm.integrations.langchain import ChatVLLM
from pagedllm.provider import openai_fields
from pagedllm.tool_calling import example_call, with_tools_in_system
from pagedllm.sampling_params import SamplingParams, StructuredOutputsParams

MAGIC = {"type": "function", "function": {
    "name": "magic_function", "description": "Apply a magic function to an input.",
    "parameters": {"type": "object", "required": ["input"],
                   "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000}}}}}
ORDER = {"type": "function", "function": {
    "name": "order", "parameters": {"type": "object", "properties": {
        "size": {"enum": ["S", "M"]}, "qty": {"type": ["integer", "null"]}, "note": {}}}}}


class Joke(BaseModel):
    setup: str = Field(description="question to set up a joke")
    punchline: str


def test_tools_in_system_show_each_spec_and_the_shape_of_a_call():
    messages = with_tools_in_system([{"role": "user", "content": "magic_function(3)?"}], [MAGIC, ORDER])
    assert [m["role"] for m in messages] == ["system", "user"]
    lines = messages[0]["content"].splitlines()
    assert json.loads(lines[1]) == MAGIC["function"] and json.loads(lines[3]) == ORDER["function"]
    assert lines[2] == 'A call to it: {"name": "magic_function", "arguments": {"input": <integer>}}'
    assert lines[4] == ('A call to it: {"name": "order", "arguments": {"size": <one of S, M>, '
                        '"qty": <integer or null>, "note": <value>}}')
    assert example_call({"name": "ping"}) == '{"name": "ping", "arguments": {}}'
    # An existing system message keeps its text first.
    with_system = with_tools_in_system([{"role": "system", "content": "Be brief."}], [MAGIC])
    assert with_system[0]["content"].startswith("Be brief.\n\nYou can call these tools.")


def _bound_constraint(runnable) -> StructuredOutputsParams:
    return runnable.first.kwargs["structured_outputs"]


def test_structured_output_is_compact_and_closed_json():
    chat = ChatVLLM(model="unused-until-first-call")
    for schema in (Joke, Joke.model_json_schema()):
        so = _bound_constraint(chat.with_structured_output(schema))
        assert so.json["properties"].keys() == {"setup", "punchline"}
        assert so.disable_any_whitespace and so.disable_additional_properties
    so = _bound_constraint(chat.with_structured_output(Joke, method="json_mode"))
    assert so.json_object and so.disable_any_whitespace and not so.disable_additional_properties


def test_grammar_options_reach_a_remote_server():
    params = SamplingParams(structured_outputs=StructuredOutputsParams(
        json={"type": "object"}, disable_any_whitespace=True, disable_additional_properties=True))
    assert openai_fields(params)["extra_body"]["structured_outputs"] == {
        "json": {"type": "object"}, "disable_any_whitespace": True, "disable_additional_properties": True}
    plain = openai_fields(SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True)))
    assert plain["extra_body"]["structured_outputs"] == {"json_object": True}


def test_structured_output_parses_into_pydantic_v1_models_too():
    from langchain_core.messages import AIMessage
    from pydantic.v1 import BaseModel as BaseModelV1

    class JokeV1(BaseModelV1):
        setup: str
        punchline: str

    chain = ChatVLLM(model="unused-until-first-call").with_structured_output(JokeV1)
    parsed = chain.last.invoke(AIMessage(content='{"setup":"a","punchline":"b"}'))
    assert isinstance(parsed, JokeV1) and parsed.punchline == "b"
    assert _bound_constraint(chain).json["properties"].keys() == {"setup", "punchline"}


def test_a_forced_tool_call_is_compact_closed_json():
    from langchain_core.messages import HumanMessage

    chat = ChatVLLM(model="unused-until-first-call")
    _, params, tools, call_tool = chat._request([HumanMessage("magic_function(3)?")], None,
                                                {"tools": [MAGIC], "tool_choice": "any"})
    so = params.structured_outputs
    assert call_tool and tools == [MAGIC]
    assert so.json["properties"]["name"] == {"const": "magic_function"}
    assert so.disable_any_whitespace and so.disable_additional_properties
