"""One message for names that are not accepted: the unknown ones, a "did you mean", the accepted list.

Used everywhere a user types a name (``LLM(...)`` engine arguments, the LangChain and LlamaIndex
constructors, chat roles, server request fields) so that a typo is never silent and always reads alike.
"""
from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable


def suggestions(name: str, accepted: Iterable[str]) -> list[str]:
    """The accepted names closest to ``name`` (difflib), best first; [] when none is close."""
    return difflib.get_close_matches(str(name), sorted(set(accepted)), n=3, cutoff=0.6)


def did_you_mean(name: str, accepted: Iterable[str]) -> str:
    """``" (did you mean 'max_tokens'?)"`` or ``""``."""
    close = suggestions(name, accepted)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def unknown_names_message(unknown: Iterable[str], accepted: Iterable[str], what: str) -> str:
    """``unexpected engine argument 'max_num_seq' (did you mean 'max_num_seqs'?); accepted: [...]``."""
    unknown, accepted = sorted(set(unknown)), sorted(set(accepted))
    parts = [f"{name!r}{did_you_mean(name, accepted)}" for name in unknown]
    plural = "s" if len(unknown) > 1 else ""
    return f"unexpected {what}{plural} {', '.join(parts)}; accepted: {accepted}"


def reject_unknown(given: Iterable[str], accepted: Iterable[str], what: str, error=TypeError) -> None:
    """Raise ``error`` with ``unknown_names_message`` when ``given`` holds names outside ``accepted``."""
    accepted = set(accepted)
    unknown = [name for name in given if name not in accepted]
    if unknown:
        raise error(unknown_names_message(unknown, accepted, what))


@functools.cache
def model_field_names(cls) -> frozenset[str]:
    """The names a pydantic model's constructor takes: its fields and their aliases (asked per request
    by the server, so computed once per class)."""
    names = set()
    for name, info in cls.model_fields.items():
        names.add(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
    return frozenset(names)


def reject_unknown_fields(cls, data, what: str):
    """For a ``model_validator(mode="before")``: a dict with a name the model lacks is a TypeError
    with the accepted names and a "did you mean"; anything else passes through unchanged."""
    if isinstance(data, dict):
        reject_unknown([k for k in data if isinstance(k, str)], model_field_names(cls), what)
    return data
