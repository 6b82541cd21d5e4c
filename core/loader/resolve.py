"""Resolve the name a user typed (``LLM(model=...)``) to one local folder the engine can load."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pagedllm.loader.gguf import convert_gguf
from pagedllm.loader.sources import CONFIG_FILE, GGUF_SUFFIX, Lookup, single_gguf_in


@dataclass(slots=True, frozen=True)
class ResolvedModel:
    """``path``: a folder with config.json, weights and tokenizer files; ``source``: the source
    that found it; ``name``: what the user typed (for ``--served-model-name`` defaults, logs);
    ``gguf_file``: the GGUF file ``path`` was converted from (its quantized tensors load from it)."""

    path: str
    source: str
    name: str
    gguf_file: str | None = None


def model_sources() -> list:
    """Sources registered through the ``register_model_sources`` hook, in the order to try."""
    from pagedllm.plugins.manager import load_plugins

    sources: list = []
    load_plugins().hook.register_model_sources(register=sources.append)
    return sources


def resolve_model(
    model: str, *, revision: str | None = None, download_dir: str | os.PathLike | None = None
) -> ResolvedModel:
    """Try each source in turn; the first that finds ``model`` wins.

    A GGUF file is converted (once, cached) into an HF-style folder. When no source knows the
    name, one ``ValueError`` lists every source and why it declined.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path (str), got {type(model).__name__}")
    model = os.fspath(model)
    if not model.strip():
        raise ValueError("model must not be empty: give a local path, a hub repo id or 'smollm2'")
    if download_dir is not None:
        download_dir = os.fspath(download_dir)

    declined = []
    for source in model_sources():
        found = _ask(source, model, revision=revision, download_dir=download_dir)
        if found.path is not None:
            gguf = _gguf_of(found.path)
            folder = convert_gguf(gguf) if gguf is not None else _as_folder(found.path)
            return ResolvedModel(path=folder, source=source.name, name=model,
                                 gguf_file=None if gguf is None else str(gguf))
        declined.append(f"  - {source.name}: {found.reason}")
    raise ValueError(
        f"model={model!r} could not be resolved"
        + (f" (revision={revision!r})" if revision else "")
        + ". Sources tried:\n"
        + "\n".join(declined)
    )


def _ask(source, model: str, *, revision, download_dir) -> Lookup:
    """Built-in sources explain themselves (``lookup``); plugin ones may only ``resolve``."""
    if hasattr(source, "lookup"):
        return source.lookup(model, revision=revision, download_dir=download_dir)
    path = source.resolve(model, revision=revision, download_dir=download_dir)
    return Lookup(path, "" if path else "does not know this name")


def _gguf_of(path: str) -> Path | None:
    """The GGUF file a source's answer stands for: the file itself, or a folder's only GGUF (without config.json)."""
    found = Path(path)
    if found.is_file() and found.suffix.lower() == GGUF_SUFFIX:
        return found
    if found.is_dir() and not (found / CONFIG_FILE).is_file():
        return single_gguf_in(found)
    return None


def _as_folder(path: str) -> str:
    found = Path(path)
    if found.is_dir() and (found / CONFIG_FILE).is_file():
        return str(found)
    raise ValueError(f"a model source returned {path!r}, which is neither a .gguf file nor a folder with {CONFIG_FILE}")
