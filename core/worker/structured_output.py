"""Structured output: grammar state per request (llguidance) and the batched token bitmask.

llguidance compiles a JSON schema, regex, choice list or Lark/GBNF grammar lazily against the
tokenizer's token trie and computes a next-token mask in tens of microseconds on CPU, with no
up-front per-vocabulary compilation (see docs/structured_output.md for the choice). The mask
is a bitmask ``int32 [rows, ceil(V/32)]`` that the sampler applies with one tensor op.
"""
from __future__ import annotations

import copy
import json

import torch

from pagedllm.sampling_params import StructuredOutputsParams


def _grammar_text(so: StructuredOutputsParams) -> str:
    import llguidance

    if so.json is not None or so.json_object:
        schema = json.loads(so.json) if isinstance(so.json, str) else copy.deepcopy(so.json or {"type": "object"})
        if so.disable_additional_properties:
            _close_objects(schema)
        if so.disable_any_whitespace and isinstance(schema, dict):
            schema.setdefault("x-guidance", {})["whitespace_flexible"] = False
        return llguidance.grammar_from("json_schema", json.dumps(schema))
    if so.regex is not None:
        return llguidance.grammar_from("regex", so.regex)
    if so.choice is not None:
        return llguidance.grammar_from("choice", so.choice)
    return llguidance.grammar_from("grammar", so.grammar)


# Keywords whose value is a map of names to subschemas, and keywords whose value is data, not a schema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = ("const", "enum", "default", "examples", "required", "x-guidance")


def _close_objects(schema) -> None:
    """``additionalProperties: false`` on every (sub)schema with properties and no word on extras."""
    if isinstance(schema, list):
        for item in schema:
            _close_objects(item)
        return
    if not isinstance(schema, dict):
        return
    if ("properties" in schema or "patternProperties" in schema) and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                _close_objects(sub)
        elif key not in _DATA:
            _close_objects(value)


class StructuredOutputCompiler:
    """One per engine: the llguidance view of the tokenizer (built once, ~1 s) and matchers."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids):
        try:
            import llguidance.hf
        except ImportError as e:  # pragma: no cover - llguidance is a core dependency
            raise ImportError("structured_outputs needs llguidance: pip install llguidance") from e
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                        eos_token=list(eos_token_ids) or None)

    def matcher(self, so: StructuredOutputsParams):
        """A fresh grammar state for one sequence; a bad grammar is a ValueError naming the field."""
        import llguidance

        try:
            grammar = _grammar_text(so)
        except Exception as e:
            raise ValueError(f"structured_outputs: cannot compile the constraint: {e}") from None
        m = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"structured_outputs: invalid constraint: {m.get_error()}")
        return m


def fill_bitmask(matchers: list, vocab_size: int) -> torch.Tensor:
    """Next-token bitmasks of these grammar states, one row each (bit set = allowed)."""
    bitmask = torch.full((len(matchers), (vocab_size + 31) // 32), -1, dtype=torch.int32)
    for i, m in enumerate(matchers):
        v = bitmask[i]
        m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())
    return bitmask
