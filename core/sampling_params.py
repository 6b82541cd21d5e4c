"""SamplingParams: vLLM's field names, defaults and validation.

Every user-facing knob of a request lives here and is checked once, when the object is
built, so that a bad value fails at the caller with the field's name and its allowed range
instead of deep inside a batched step that also serves other requests.
"""
from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, fields

from pagedllm.names import reject_unknown

_GREEDY_EPS = 1e-5
_MAX_LOGIT_BIAS = 100.0  # OpenAI's and vLLM's clamp


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # every output carries everything generated so far
    DELTA = 1  # every output carries only what is new since the last one
    FINAL_ONLY = 2  # one output, when the request finishes (what LLM.generate uses)


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


@dataclass
class StructuredOutputsParams:
    """One constraint on the output's shape (exactly one of the fields): vLLM's names.

    ``json``: a JSON schema (dict or JSON string); ``regex``; ``choice``: the output is one of
    these strings; ``grammar``: a Lark (llguidance) or GBNF grammar; ``json_object``: any JSON object.
    Options for ``json``/``json_object`` (vLLM's names): ``disable_any_whitespace`` writes compact
    JSON (no newlines or indentation between tokens); ``disable_additional_properties`` closes every
    object schema that lists ``properties`` but says nothing of ``additionalProperties`` (as
    xgrammar and outlines do by default), so the output has no keys the schema does not name.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_outputs needs exactly one of json, regex, choice, grammar, "
                             f"json_object; got {given or 'none'}")
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    json.loads(self.json)
                except ValueError as e:
                    raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from None
            elif not isinstance(self.json, dict):
                raise TypeError(f"structured_outputs.json must be a dict or a JSON string, got {type(self.json).__name__}")
        if self.regex is not None and not isinstance(self.regex, str):
            raise TypeError("structured_outputs.regex must be a str")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise TypeError("structured_outputs.grammar must be a str")
        if self.choice is not None:
            if (not isinstance(self.choice, (list, tuple)) or not self.choice
                    or not all(isinstance(c, str) and c for c in self.choice)):
                raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")
            self.choice = list(self.choice)


# vLLM's older name for the same thing.
GuidedDecodingParams = StructuredOutputsParams


@dataclass
class SamplingParams:
    """How to sample one request. ``temperature=0`` means greedy."""

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    detokenize: bool = True
    truncate_prompt_tokens: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    structured_outputs: StructuredOutputsParams | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        self._verify()

    @classmethod
    def from_optional(cls, **kwargs) -> "SamplingParams":
        """Build from keyword arguments, dropping those that are None; unknown names are a TypeError."""
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        if "guided_decoding" in kwargs:  # vLLM's older name
            kwargs["structured_outputs"] = kwargs.pop("guided_decoding")
        reject_unknown(kwargs, known, "sampling parameter")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def _verify(self) -> None:
        """Check every field, group by group, in a fixed order: with several bad fields, the same one is named."""
        self._verify_sampling_knobs()
        self._verify_lengths()
        self._verify_stops_and_flags()
        self._verify_token_constraints()
        self._verify_beam_and_structure()

    def _verify_sampling_knobs(self) -> None:
        """n/best_of and the numeric knobs that shape the distribution (penalties, temperature, top-p/k, min-p)."""
        _int("n", self.n, low=1)
        if self.best_of is not None:
            _int("best_of", self.best_of)
            if self.best_of < self.n:
                raise ValueError(f"best_of={self.best_of} must be >= n={self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _number(name, value)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name}={value} must be in [-2, 2]")
        _number("repetition_penalty", self.repetition_penalty)
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        _number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        _number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        _int("top_k", self.top_k)
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k} must be -1 or 0 (disabled) or >= 1")
        _number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1]")

    def _verify_lengths(self) -> None:
        """seed, the output-length bounds and the logprob counts: integers with lower bounds."""
        if self.seed is not None:
            _int("seed", self.seed)
        if self.max_tokens is not None:
            _int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens={self.max_tokens} must be >= 1")
        _int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens} must be <= max_tokens={self.max_tokens}")
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, low=0)
        if self.prompt_logprobs is not None:
            _int("prompt_logprobs", self.prompt_logprobs, low=0)

    def _verify_stops_and_flags(self) -> None:
        """Stop token ids and stop strings (normalised to lists) and the bool flags."""
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids={self.stop_token_ids!r} must be a list of non-negative ints")
        self.stop_token_ids = list(self.stop_token_ids)
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop={self.stop!r} must be a non-empty string or a list of non-empty strings")
        self.stop = list(self.stop)
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize=True (they are matched on the text)")
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "detokenize",
                     "include_stop_str_in_output", "use_beam_search"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def _verify_token_constraints(self) -> None:
        """logit_bias, allowed_token_ids and bad_words: per-token edits the sampler applies to every step."""
        if self.logit_bias is not None:
            self.logit_bias = _normalized_logit_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            if (not isinstance(self.allowed_token_ids, (list, tuple)) or not self.allowed_token_ids
                    or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                               for t in self.allowed_token_ids)):
                raise ValueError("allowed_token_ids must be a non-empty list of token ids >= 0")
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.bad_words is not None:
            if not isinstance(self.bad_words, (list, tuple)) or not all(
                    isinstance(w, str) and w.strip() for w in self.bad_words):
                raise ValueError("bad_words must be a list of non-empty strings")
            self.bad_words = list(self.bad_words)

    def _verify_beam_and_structure(self) -> None:
        """Prompt truncation, the beam-search knobs and structured outputs (which beam search cannot honour)."""
        if self.truncate_prompt_tokens is not None:
            _int("truncate_prompt_tokens", self.truncate_prompt_tokens, low=1)
        _number("length_penalty", self.length_penalty)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping={self.early_stopping!r} must be True, False or 'never'")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise TypeError("structured_outputs must be StructuredOutputsParams or a dict of its fields")
        if self.use_beam_search and self.structured_outputs is not None:
            raise ValueError("use_beam_search cannot be combined with structured_outputs")

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _GREEDY_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM_SEED if self.seed is not None else SamplingType.RANDOM


    @property
    def num_samples(self) -> int:
        """How many sequences the request runs (``best_of``, defaulting to ``n``)."""
        return self.best_of if self.best_of is not None else self.n

    @property
    def uses_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)


@dataclass
class BeamSearchParams:
    """``LLM.beam_search`` options (vLLM's names)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        _int("beam_width", self.beam_width, low=1)
        _int("max_tokens", self.max_tokens, low=1)
        _number("length_penalty", self.length_penalty)
        _number("temperature", self.temperature)
        if self.temperature != 0.0:
            raise ValueError(f"temperature={self.temperature}: beam search is deterministic, only 0 is supported")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping={self.early_stopping!r} must be True, False or 'never'")


def _number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")


def _int(name: str, value, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}={value} must be >= {low}")


def _normalized_logit_bias(logit_bias) -> dict[int, float]:
    """{token_id: bias} with int keys (JSON sends them as strings) and biases clamped to +-100 as OpenAI does."""
    if not isinstance(logit_bias, dict):
        raise TypeError(f"logit_bias must be a dict {{token_id: bias}}, got {type(logit_bias).__name__}")
    bias = {}
    for k, v in logit_bias.items():
        try:
            tid = int(k)  # JSON (OpenAI) sends the token ids as strings
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias key {k!r} must be a token id") from None
        if tid < 0:
            raise ValueError(f"logit_bias key {tid} must be a token id >= 0")
        _number(f"logit_bias[{tid}]", v)
        bias[tid] = max(-_MAX_LOGIT_BIAS, min(_MAX_LOGIT_BIAS, float(v)))
    return bias


# generation_config.json keys that become sampling defaults (vLLM's get_diff_sampling_param).
GENERATION_CONFIG_KEYS = {"repetition_penalty": "repetition_penalty", "temperature": "temperature",
                          "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "max_new_tokens": "max_tokens"}


def generation_config_defaults(source: str, model_path: str) -> dict:
    """Sampling defaults from a generation_config.json (vLLM's ``--generation-config``).

    ``source`` is ``"auto"`` (the model folder's file), ``"vllm"`` (none: SamplingParams' own
    defaults) or a folder holding the file. Only the keys the file sets count, as in vLLM: a value
    transformers would merely default (e.g. its top_k=50) is no default here.
    """
    if source == "vllm":
        return {}
    path = os.path.join(model_path if source == "auto" else source, "generation_config.json")
    if not os.path.isfile(path):
        if source != "auto":
            raise ValueError(f"generation_config={source!r}: no generation_config.json there")
        return {}
    with open(path) as f:
        config = json.load(f)
    return {name: config[key] for key, name in GENERATION_CONFIG_KEYS.items() if config.get(key) is not None}
