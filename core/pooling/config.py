"""How a model pools, and whether it runs as a generator or a pooling model.

A sentence-transformers folder says it itself (``modules.json``, ``1_Pooling/config.json``, a
``Normalize`` module), so pagedllm embeds exactly as ``SentenceTransformer.encode`` does; otherwise
the architecture's default applies (CLS for BERT-style encoders, LAST for decoders used as
embedders) with normalisation on, as vLLM's. ``PoolerConfig`` fields a user sets win over both.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

from pagedllm.names import reject_unknown

POOLING_TYPES = ("MEAN", "CLS", "LAST")
RUNNERS = ("auto", "generate", "pooling")
# sentence-transformers' pooling modes -> ours; the others (max, mean_sqrt_len, weightedmean) are refused
_ST_MODES = {"pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS", "pooling_mode_lasttoken": "LAST"}
_ST_TYPES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
             "sentence_transformers.models.Normalize"}


@dataclass
class PoolerConfig:
    """vLLM's ``pooler_config``: ``pooling_type`` MEAN, CLS or LAST, ``normalize`` the default of requests
    that do not say; None leaves each to the checkpoint (sentence-transformers files) or the model."""

    pooling_type: str | None = None
    normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.pooling_type is not None:
            if not isinstance(self.pooling_type, str) or self.pooling_type.upper() not in POOLING_TYPES:
                raise ValueError(f"pooler_config pooling_type={self.pooling_type!r}; choose one of "
                                 f"{', '.join(POOLING_TYPES)}")
            self.pooling_type = self.pooling_type.upper()
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise TypeError(f"pooler_config normalize must be a bool, got {type(self.normalize).__name__}")

    @classmethod
    def coerce(cls, value) -> "PoolerConfig | None":
        """A PoolerConfig, a dict of its fields (the CLI's JSON), or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"pooler_config={value!r} is not JSON (e.g. '{{\"pooling_type\": \"MEAN\"}}')") from None
        if not isinstance(value, dict):
            raise TypeError(f"pooler_config must be a PoolerConfig or a dict, got {type(value).__name__}")
        reject_unknown(value, {f.name for f in fields(cls)}, "pooler_config field")
        return cls(**value)


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sentence_transformers_pooler(model_path: str) -> PoolerConfig | None:
    """The pooler a sentence-transformers folder describes, or None when ``model_path`` is not one.

    Modules other than Transformer, Pooling and Normalize (a Dense projection, ...) are refused rather
    than skipped: their embeddings would differ from the model's own.
    """
    modules_file = os.path.join(model_path, "modules.json")
    if not os.path.isfile(modules_file):
        return None
    pooling_type, normalize = None, False
    for module in _read_json(modules_file):
        kind = module.get("type", "")
        if kind not in _ST_TYPES:
            raise ValueError(f"sentence-transformers module {kind!r} ({module.get('path')}) is not supported; "
                             f"supported modules: {', '.join(sorted(_ST_TYPES))}")
        if kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Pooling"):
            settings = _read_json(os.path.join(model_path, module.get("path", ""), "config.json"))
            on = [mode for mode, value in settings.items() if mode.startswith("pooling_mode") and value]
            if len(on) != 1 or on[0] not in _ST_MODES:
                raise ValueError(f"sentence-transformers pooling {on} is not supported; supported: one of "
                                 f"{', '.join(sorted(_ST_MODES))}")
            pooling_type = _ST_MODES[on[0]]
    return PoolerConfig(pooling_type, normalize)


def sentence_transformers_max_length(model_path: str) -> int | None:
    """``max_seq_length`` of ``sentence_bert_config.json``: the length sentence-transformers embeds at."""
    path = os.path.join(model_path, "sentence_bert_config.json")
    if not os.path.isfile(path):
        return None
    value = _read_json(path).get("max_seq_length")
    return int(value) if value else None


def resolve_pooler(user: PoolerConfig | None, model_path: str, default_type: str) -> PoolerConfig:
    """Every field decided: the user's, else the sentence-transformers folder's, else the model's default."""
    st = sentence_transformers_pooler(model_path)
    layers = [c for c in (user, st) if c is not None]
    pooling_type = next((c.pooling_type for c in layers if c.pooling_type is not None), default_type)
    normalize = next((c.normalize for c in layers if c.normalize is not None), True)
    return PoolerConfig(pooling_type, normalize)


def resolve_runner(runner: str, model_cls, model_path: str) -> str:
    """``generate`` or ``pooling``: ``auto`` picks pooling for encoders (no LM head) and sentence-transformers
    folders. An encoder asked to generate is refused, naming the runner it takes."""
    encoder = bool(getattr(model_cls, "is_pooling_model", False))
    if runner == "auto":
        is_st = os.path.isfile(os.path.join(model_path, "modules.json"))
        return "pooling" if encoder or is_st else "generate"
    if runner == "generate" and encoder:
        raise ValueError(f"runner='generate': {model_cls.__name__} is an encoder without a language-model head; it "
                         "runs as runner='pooling' (embeddings: LLM.embed, /v1/embeddings)")
    return runner
