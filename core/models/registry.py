"""Architecture name -> model class, filled by the ``register_models`` plugin hook."""
from __future__ import annotations

from torch import nn

_MODELS: dict[str, type[nn.Module]] | None = None


def _registry() -> dict[str, type[nn.Module]]:
    global _MODELS
    if _MODELS is None:
        from pagedllm.plugins.manager import load_plugins

        models: dict[str, type[nn.Module]] = {}
        load_plugins().hook.register_models(register=lambda arch, cls: models.__setitem__(arch, cls))
        _MODELS = models
    return _MODELS


def supported_architectures() -> list[str]:
    return sorted(_registry())


def get_model_class(config) -> type[nn.Module]:
    archs = list(getattr(config, "architectures", None) or [])
    if not archs and getattr(config, "model_type", None) == "llama":
        archs = ["LlamaForCausalLM"]  # GGUF-derived configs may lack `architectures`
    for arch in archs:
        if arch in _registry():
            return _registry()[arch]
    raise ValueError(f"model architecture(s) {archs} are not supported; supported: {supported_architectures()}")
