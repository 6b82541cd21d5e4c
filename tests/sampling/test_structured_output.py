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
