"""Tool calling over the OpenAI API on the bundled SmolLM2-135M-Instruct, through the in-process client and a
live loopback server over one engine: forced calls (``required``, a named function) always parse and validate
against their JSON schema (``jsonschema``, an independent validator); ``auto`` with each parser equals that
parser applied to the same prompt's raw completion; streamed calls join to the whole answer; a full round trip;
LangChain's ``ChatOpenAI`` (``bind_tools``, ``with_structured_output``) and ``ChatVLLM`` give the same call."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import jsonschema
import openai
import pytest
from model_fixtures import BUNDLED

from pagedllm.tool_parsers import get_tool_parser

ENGINE = dict(dtype="float32", max_model_len=2048, seed=0)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
FLIGHTS = {"type": "function", "function": {
    "name": "search_flights", "description": "Find flights between two airports on a day",
    "parameters": {"type": "object", "properties": {
        "origin": {"type": "string", "minLength": 3, "maxLength": 3}, "destination": {"type": "string"},
        "passengers": {"type": "integer", "minimum": 1, "maximum": 9}, "nonstop": {"type": "boolean"}},
        "required": ["origin", "destination", "passengers"]}}}
TOOLS = [WEATHER, ADD, FLIGHTS]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Quito", "Hanoi", "Perth", "Accra", "Bern"]
PROMPTS = ([f"What is the weather like in {c} today?" for c in CITIES]
           + [f"How much is {a} plus {b}?" for a, b in zip(range(3, 13), range(40, 10, -3))]
           + [f"Book me a flight from {o} to {d} for {n} people." for o, d, n in
              zip(["JFK", "LHR", "CDG", "SFO", "NRT"], ["Rome", "Berlin", "Madrid", "Seattle", "Seoul"], range(1, 6))]
           + [f"Is it raining in {c}? Use fahrenheit." for c in CITIES[:5]]
           + [f"Tell me something about {c}." for c in CITIES]
           + ["Hi!", "Write a haiku about rain.", "What can you do?", "Add 2 and 2, please.", "Flights to Oslo?",
              "Sum of seven and nine?", "Weather?", "I need to travel tomorrow.", "Compute 100 + 250.",
              "Is it cold in Bern?"])
assert len(PROMPTS) == 50


@pytest.fixture(scope="module")
def engine():
    from pagedllm.provider import LocalProvider

    return LocalProvider(BUNDLED, **ENGINE).engine  # the engine ChatVLLM(dtype="float32") shares


def shim(parser: str | None = None, asynchronous: bool = False):
    from pagedllm.integrations.openai import AsyncOpenAI, OpenAI

    return (AsyncOpenAI if asynchronous else OpenAI)(BUNDLED, tool_call_parser=parser, **ENGINE)


@pytest.fixture(scope="module")
def live(engine):
    """A loopback server (uvicorn thread) over the same engine, auto calls read by llama3_json."""
    import uvicorn
    from live_server import free_port

    from pagedllm.integrations.openai import app_for

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_for(BUNDLED, tool_call_parser="llama3_json", **ENGINE),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


def _check_call(call, allowed: set[str]) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in allowed
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


@pytest.mark.parametrize("choice", ["required", pytest.param("add", marks=pytest.mark.slow)])
def test_forced_calls_always_validate(engine, choice):
    """50 varied prompts (many with no reason to call anything): every answer is a valid call.

    frequency_penalty 0.5, as a user of a 135M model sets it: greedy, it can repeat inside a string
    ("Caf_A_L_L_L...") until max_tokens cuts the call (2 of 50 at 0); the grammar keeps every call valid,
    but cannot make a cut one complete."""
    tool_choice = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    allowed = set(SCHEMAS) if choice == "required" else {choice}

    async def ask_all():
        client = shim(asynchronous=True)
        return await asyncio.gather(*[client.chat.completions.create(
            model=BUNDLED, messages=[{"role": "user", "content": p}], tools=TOOLS, tool_choice=tool_choice,
            temperature=0, max_tokens=96, frequency_penalty=0.5) for p in PROMPTS])

    for response in asyncio.run(ask_all()):
        choice_ = response.choices[0]
        assert choice_.finish_reason == "tool_calls" and choice_.message.content is None
        assert choice_.message.tool_calls
        for call in choice_.message.tool_calls:
            _check_call(call, allowed)


def _stream_call(client, **request):
    calls, finish = {}, None
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": d.id, "name": None, "arguments": ""})
                call["name"] = call["name"] or d.function.name
                call["arguments"] += d.function.arguments or ""
    return [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], finish


def test_sync_async_stream_and_server_agree(engine, live):
    request = dict(model=BUNDLED, messages=[{"role": "user", "content": "How much is 12 plus 30?"}], tools=TOOLS,
                   tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0, max_tokens=64)
    whole = shim().chat.completions.create(**request).choices[0].message.tool_calls
    expected = [(c.function.name, c.function.arguments) for c in whole]
    assert expected[0][0] == "add" and set(json.loads(expected[0][1])) == {"a", "b"}
    async_call = asyncio.run(shim(asynchronous=True).chat.completions.create(**request)).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in async_call] == expected
    assert _stream_call(shim(), **request) == (expected, "tool_calls")
    remote = openai.OpenAI(base_url=live, api_key="x")
    served = remote.chat.completions.create(**request).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in served] == expected
    assert _stream_call(remote, **request) == (expected, "tool_calls")


SHOTS = {"hermes": lambda c: f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}\n</tool_call>',
         "llama3_json": lambda c: f'{{"name": "get_weather", "parameters": {{"city": "{c}"}}}}',
         "pythonic": lambda c: f'[get_weather(city="{c}")]'}


def _few_shot(parser: str, city: str) -> list[dict]:
    """Two earlier turns in the parser's format: the 135M model then answers in it too."""
    messages = []
    for prev in ["Berlin", "Oslo"]:
        messages += [{"role": "user", "content": f"What is the weather in {prev}?"},
                     {"role": "assistant", "content": SHOTS[parser](prev)},
                     {"role": "tool", "content": "12 C, cloudy"},
                     {"role": "assistant", "content": f"It is 12 C and cloudy in {prev}."}]
    return messages + [{"role": "user", "content": f"What is the weather in {city}?"}]


@pytest.mark.parametrize("parser", sorted(SHOTS))
def test_auto_equals_the_parser_on_the_raw_answer(engine, parser):
    from pagedllm.entrypoints.openai.protocol import ChatMessage
    from pagedllm.integrations.openai import OpenAI, app_for

    app = app_for(BUNDLED, tool_call_parser=parser, **ENGINE)
    client = OpenAI(BUNDLED, app=app)
    messages = _few_shot(parser, "Lima")
    # the same prompt (as the server renders it, tools included) completed raw, then parsed here
    ids = app.state.models.main.chat.render([ChatMessage(**m) for m in messages], tools=[WEATHER])
    raw = client.completions.create(model=BUNDLED, prompt=ids, temperature=0, max_tokens=48).choices[0].text
    expected = get_tool_parser(parser)().extract_tool_calls(raw)
    response = client.chat.completions.create(model=BUNDLED, messages=messages, tools=[WEATHER], temperature=0,
                                              max_tokens=48)
    message = response.choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == \
        [(c.name, json.loads(c.arguments)) for c in expected.calls] == [("get_weather", {"city": "Lima"})]
    assert response.choices[0].finish_reason == "tool_calls"
    streamed, finish = _stream_call(client, model=BUNDLED, messages=messages, tools=[WEATHER], temperature=0,
                                    max_tokens=48)
    assert streamed == [(c.function.name, c.function.arguments) for c in message.tool_calls] and finish == "tool_calls"


def test_round_trip_call_tool_answer(engine):
    """call -> the tool's result -> an answer that the template rendered with the call and the result."""
    client = shim()
    messages = [{"role": "user", "content": "What is the weather in Cairo?"}]
    first = client.chat.completions.create(model=BUNDLED, messages=messages, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=64).choices[0].message
    (call,) = first.tool_calls
    assert _check_call(call, {"get_weather"})["city"] == "Cairo"
    messages += [first.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "31 C and sunny"}]
    second = client.chat.completions.create(model=BUNDLED, messages=messages, tools=[WEATHER], tool_choice="none",
                                            temperature=0, max_tokens=24)
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    assert second.usage.prompt_tokens > 0
    from pagedllm.integrations.openai import BASE_URL

    rendered = client.post(BASE_URL.removesuffix("/v1") + "/tokenize", cast_to=object,
                           body={"model": BUNDLED, "messages": messages})
    text = engine.tokenizer.decode(rendered["tokens"])
    assert "31 C and sunny" in text and '"name": "get_weather"' in text and '"Cairo"' in text


@pytest.mark.parametrize("request_fields, param, words", [
    ({"tools": [WEATHER]}, "tool_choice", "--enable-auto-tool-choice"),  # auto is the default with tools
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "response_format"),
    ({"functions": [WEATHER["function"]]}, "functions", "tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools", "name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "'none', 'auto' or 'required'"),
])
def test_bad_tool_requests_are_400_naming_the_field(engine, request_fields, param, words):
    with pytest.raises(openai.BadRequestError) as exc:
        shim().chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       **request_fields)
    body = exc.value.body
    assert body["param"].startswith(param) and words in body["message"], body


def test_langchain_chat_openai_against_the_server(engine, live):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(base_url=live, api_key="x", model=BUNDLED, temperature=0, max_tokens=64)
    message = llm.bind_tools([ADD], tool_choice="add").invoke("How much is 12 plus 30?")
    (call,) = message.tool_calls
    assert call["name"] == "add" and jsonschema.validate(call["args"], SCHEMAS["add"]) is None

    class City(BaseModel):
        """A city and its country."""

        name: str = Field(description="the city")
        country: str = Field(description="the country it is in")

    city = llm.with_structured_output(City, method="json_schema").invoke("Name a large city in Japan.")
    assert isinstance(city, City) and city.name and city.country


def test_chatvllm_makes_the_same_call_as_the_server(engine):
    """One rendering and one grammar: ChatVLLM in-process and the API's named choice give the same call."""
    from pagedllm.integrations.langchain import ChatVLLM

    question = "How much is 12 plus 30?"
    ours = ChatVLLM(model=BUNDLED, temperature=0, max_tokens=64, dtype="float32",
                    vllm_kwargs={"max_model_len": 2048, "seed": 0}).bind_tools([ADD], tool_choice="add").invoke(question)
    served = shim().chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": question}],
                                            tools=[ADD], tool_choice={"type": "function", "function": {"name": "add"}},
                                            temperature=0, max_tokens=64).choices[0].message.tool_calls
    assert [(c["name"], c["args"]) for c in ours.tool_calls] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in served]


CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                "population": {"type": "integer", "minimum": 0}},
               "required": ["name", "population"], "additionalProperties": False}


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_response_format_json_schema_and_json_object(engine, endpoint):
    """``response_format`` through the same grammar engine: strict schema answers validate, json_object ones
    are JSON objects, on chat and on completions."""
    client = shim()
    formats = {"json_schema": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA,
                                                                      "strict": True}},
               "json_object": {"type": "json_object"}}
    for kind, response_format in formats.items():
        if endpoint == "chat":
            text = client.chat.completions.create(
                model=BUNDLED, messages=[{"role": "user", "content": "Tokyo's name and population as JSON."}],
                temperature=0, max_tokens=200, frequency_penalty=0.5,
                response_format=response_format).choices[0].message.content
        else:
            text = client.completions.create(model=BUNDLED, prompt="Tokyo's name and population as JSON:",
                                             temperature=0, max_tokens=200,
                                             frequency_penalty=0.5,
                                             extra_body={"response_format": response_format}).choices[0].text
        value = json.loads(text)
        assert isinstance(value, dict), text
        if kind == "json_schema":
            jsonschema.validate(value, CITY_SCHEMA)
