"""Per-step state the model's attention layers read, instead of threading it through forward()."""
from __future__ import annotations

from contextlib import contextmanager

_CONTEXT = None


def get_forward_context():
    """The current step's AttentionMetadata (None outside a forward, e.g. in weight loading)."""
    return _CONTEXT


@contextmanager
def set_forward_context(metadata):
    global _CONTEXT
    previous, _CONTEXT = _CONTEXT, metadata
    try:
        yield
    finally:
        _CONTEXT = previous
