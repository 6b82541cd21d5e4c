"""Architecture name -> model class, filled by the ``register_models`` plugin hook."""
from __future__ import annotations

from torch import nn

from pagedllm.config import MODEL_IMPLS  # one list: the config validates it, the CLI offers it


def _registry() -> dict[str, type[nn.Module]]:
    """Asked of the hook on every lookup, not cached, so a plugin registered later is seen."""
    from pagedllm.plugins.manager import load_plugins

    models: dict[str, type[nn.Module]] = {}
    load_plugins().hook.register_models(register=lambda arch, cls: models.__setitem__(arch, cls))
    return models


def supported_architectures() -> list[str]:
    return sorted(_registry())


def get_model_class(config) -> type[nn.Module]:
    archs = list(getattr(config, "architectures", None) or [])
    if not archs and getattr(config, "model_type", None) == "llama":
        archs = ["LlamaForCausalLM"]  # GGUF-derived configs may lack `architectures`
    registry = _registry()
    for arch in archs:
        if arch in registry:
            return registry[arch]
    raise ValueError(f"model architecture(s) {archs} are not supported; supported: {sorted(registry)}")


def resolve_model_class(config, model_impl: str = "auto") -> type[nn.Module]:
    """``native``: ours or an error; ``transformers``: the HF fallback; ``auto``: ours when we have one."""
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl={model_impl!r}; choose one of {', '.join(MODEL_IMPLS)}")
    if model_impl != "transformers":
        try:
            return get_model_class(config)
        except ValueError:
            if model_impl == "native":
                raise
    from pagedllm.models.transformers_fallback import TransformersForCausalLM, check_supported

    check_supported(config)
    return TransformersForCausalLM
