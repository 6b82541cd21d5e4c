"""Structured output on the bundled SmolLM2 model: JSON schema, regex, choice, grammar."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pagedllm import SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def _chat(llm, text):
    tok = llm.get_tokenizer()
    chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return {"prompt_token_ids": tok.encode(chat, add_special_tokens=False)}


def test_json_schema_20_generations_validate(bundled_llm_fp32):
    llm = bundled_llm_fp32
    prompt = _chat(llm, "Describe a person as JSON with name, age and city.")
    params = [SamplingParams(temperature=0.9, seed=i, max_tokens=48,
                             structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True))
              for i in range(20)]
    outs = llm.generate([prompt] * 20, params, use_tqdm=False)
    values = []
    for o in outs:
        value = json.loads(o.outputs[0].text)
        jsonschema.validate(value, SCHEMA)
        values.append(json.dumps(value, sort_keys=True))
    assert len(set(values)) > 1  # sampled, not one forced string


def test_regex_always_matches(bundled_llm_fp32):
    llm = bundled_llm_fp32
    pattern = r"[0-9]{3}-[0-9]{4}( ext\. [0-9]{1,3})?"
    outs = llm.generate([_chat(llm, "Give me a phone number.")] * 6,
                        [SamplingParams(temperature=1.0, seed=i, max_tokens=20, structured_outputs={"regex": pattern})
                         for i in range(6)], use_tqdm=False)
    for o in outs:
        assert re.fullmatch(pattern, o.outputs[0].text), o.outputs[0].text
        assert o.outputs[0].finish_reason == "stop"


def test_choice_and_grammar(bundled_llm_fp32):
    llm = bundled_llm_fp32
    choices = ["positive", "negative", "neutral"]
    outs = llm.generate([_chat(llm, "Sentiment of 'I love this movie'?")] * 4,
                        [SamplingParams(temperature=1.0, seed=i, max_tokens=10, structured_outputs={"choice": choices})
                         for i in range(4)], use_tqdm=False)
    assert all(o.outputs[0].text in choices for o in outs)
    grammar = 'start: "(" num " + " num ")"\nnum: /[1-9][0-9]?/'
    out = llm.generate(_chat(llm, "Write a sum."), SamplingParams(temperature=0.7, seed=3, max_tokens=12,
                                                                 structured_outputs={"grammar": grammar}),
                       use_tqdm=False)[0].outputs[0].text
    assert re.fullmatch(r"\([1-9][0-9]? \+ [1-9][0-9]?\)", out), out


def test_bad_constraints_are_value_errors(bundled_llm_fp32):
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(json=SCHEMA, regex="a")
    with pytest.raises(ValueError, match="choice"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(ValueError, match="structured_outputs"):
        bundled_llm_fp32.generate("x", SamplingParams(structured_outputs={"regex": "(unclosed"}), use_tqdm=False)


def _accepts(llm, so: StructuredOutputsParams, text: str) -> bool:
    """Whether the grammar of ``so`` takes all of ``text`` and may stop there."""
    matcher = llm.llm_engine._structured_compiler().matcher(so)
    tokens = llm.get_tokenizer().encode(text, add_special_tokens=False)
    return matcher.validate_tokens(tokens) == len(tokens) and matcher.consume_tokens(tokens) and matcher.is_accepting()


def test_disable_additional_properties_closes_objects_that_say_nothing(bundled_llm_fp32):
    llm = bundled_llm_fp32
    inner = {"type": "object", "properties": {"x": {"type": "integer"}}}
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/inner"}, "b": {"type": "string"}},
              "$defs": {"inner": inner}}
    closed = StructuredOutputsParams(json=schema, disable_additional_properties=True)
    assert _accepts(llm, closed, '{"a": {"x": 1}, "b": "y"}')
    assert not _accepts(llm, closed, '{"a": {"x": 1}, "b": "y", "c": 2}')  # top level closed
    assert not _accepts(llm, closed, '{"a": {"x": 1, "z": 2}, "b": "y"}')  # the $defs schema too
    assert _accepts(llm, StructuredOutputsParams(json=schema), '{"a": {"x": 1, "z": 2}, "b": "y", "c": 2}')
    # A schema that allows extras keeps them, and the caller's schema object is not modified.
    open_schema = dict(schema, additionalProperties=True)
    assert _accepts(llm, StructuredOutputsParams(json=open_schema, disable_additional_properties=True),
                    '{"a": {"x": 1}, "b": "y", "c": 2}')
    assert "additionalProperties" not in schema and "additionalProperties" not in inner


def test_disable_any_whitespace_applies_to_json_object_too(bundled_llm_fp32):
    llm = bundled_llm_fp32
    for so in (StructuredOutputsParams(json_object=True, disable_any_whitespace=True),
               StructuredOutputsParams(json={"type": "object"}, disable_any_whitespace=True)):
        assert _accepts(llm, so, '{"a":1,"b":[true,null]}')
        assert not _accepts(llm, so, '{\n  "a": 1}')
    assert _accepts(llm, StructuredOutputsParams(json_object=True), '{\n  "a": 1}')
