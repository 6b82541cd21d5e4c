"""What one pooling request asks for (vLLM's ``PoolingParams``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PoolingParams:
    """``dimensions``: keep the first N values (Matryoshka models only); ``normalize``: L2-normalise the
    vector (None: the model's pooler config decides); ``truncate_prompt_tokens``: cut a longer input to
    this many tokens instead of refusing it (-1: to the model's maximum length)."""

    dimensions: int | None = None
    normalize: bool | None = None
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None:
            if isinstance(self.dimensions, bool) or not isinstance(self.dimensions, int):
                raise TypeError(f"dimensions must be an int, got {type(self.dimensions).__name__}")
            if self.dimensions < 1:
                raise ValueError(f"dimensions={self.dimensions} must be >= 1")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise TypeError(f"normalize must be a bool or None, got {type(self.normalize).__name__}")
        t = self.truncate_prompt_tokens
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError(f"truncate_prompt_tokens must be an int, got {type(t).__name__}")
            if t < 1 and t != -1:
                raise ValueError(f"truncate_prompt_tokens={t} must be >= 1, or -1 for the model's maximum length")
