"""Per-step state the model's attention layers read, instead of threading it through forward()."""
from __future__ import annotations

from contextlib import contextmanager

_CONTEXT = None
_LORA_MAPPING = None


def get_forward_context():
    """The current step's AttentionMetadata (None outside a forward, e.g. in weight loading)."""
    return _CONTEXT


def get_lora_mapping():
    """The current step's LoRA segments (``pagedllm.lora.punica.LoRAMapping``); None when no adapter runs."""
    return _LORA_MAPPING


@contextmanager
def set_forward_context(metadata, lora_mapping=None):
    global _CONTEXT, _LORA_MAPPING
    previous, _CONTEXT = _CONTEXT, metadata
    previous_lora, _LORA_MAPPING = _LORA_MAPPING, lora_mapping
    try:
        yield
    finally:
        _CONTEXT, _LORA_MAPPING = previous, previous_lora
