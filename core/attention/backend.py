"""The attention backend interface and the per-step metadata every backend reads.

Token layout of one step (built by the model runner): all decode tokens first, one per
decoding sequence, then the prefill chunks packed back to back. The KV cache of one layer is
two tensors ``[num_blocks, block_size, num_kv_heads, head_dim]``; token ``t`` of a sequence
lives in slot ``block_table[t // block_size] * block_size + t % block_size``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pagedllm.attention.torch_backend import StepPart


@dataclass(slots=True)
class StepState:
    """What a backend computes once per step and every layer reuses (in ``prepare``, or by the
    first layer that needs it); one object per step, so nothing of it outlives the step."""

    # torch: rows whose slot is >= 0 (the rest are padding, not written); None when all are,
    # so the usual step skips a boolean index per layer
    write_mask: torch.Tensor | None = None
    # torch: the prefill chunks padded to the longest, with their gather index and causal mask
    prefill: "StepPart | None" = None
    # torch: decode rows in groups of similar context length (less padding), each with its mask
    decode_groups: "list[StepPart] | None" = None
    # triton: the split-K decode kernel's buffers, by shape, so layers do not each allocate them
    triton_workspace: dict = field(default_factory=dict)


@dataclass(slots=True)
class AttentionMetadata:
    # [num_tokens] int64: cache slot each new token's K/V is written to; -1 = do not write.
    slot_mapping: torch.Tensor
    block_size: int
    # Decode part: sequences that add exactly one token this step.
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks] int32, unused entries 0
    decode_context_lens: torch.Tensor  # [num_decodes] int32, tokens in cache incl. the new one
    max_decode_context_len: int
    # Prefill part: chunks of one or more tokens (fresh prompts, chunked prefill, prefix hits).
    num_prefills: int
    prefill_query_start_loc: torch.Tensor  # [num_prefills + 1] int32, offsets into prefill tokens
    prefill_block_tables: torch.Tensor  # [num_prefills, max_blocks] int32
    prefill_context_lens: torch.Tensor  # [num_prefills] int32, cached prefix + this chunk
    max_prefill_query_len: int
    max_prefill_context_len: int
    # Host copies of the lengths, so backends can plan without a device sync.
    decode_context_lens_list: list[int] = field(default_factory=list)
    prefill_query_lens_list: list[int] = field(default_factory=list)
    prefill_context_lens_list: list[int] = field(default_factory=list)
    # What the backend precomputes once per step in ``prepare`` (indices, masks, buffers).
    backend_state: StepState = field(default_factory=StepState)

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]


class AttentionBackend:
    """Computes attention of a step's queries over the paged KV cache.

    Model code calls ``forward`` once per layer; ``prepare`` runs once per step so the
    per-layer work is only the math.
    """

    name: str = "abstract"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 sliding_window: int | None = None, logits_soft_cap: float | None = None,
                 alibi_slopes: list[float] | None = None):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
        # One slope per query head: ``slope[h] * (key_pos - query_pos)`` is added to the scaled scores.
        self.alibi_slopes = alibi_slopes

    @classmethod
    def prepare(cls, metadata: AttentionMetadata) -> None:
        """Precompute per-step state into ``metadata.backend_state`` (optional)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        """q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim].

        Writes k, v into the caches at ``metadata.slot_mapping`` and returns
        [T, num_heads, head_dim] attention output in the token layout above.
        """
        raise NotImplementedError


def _registry() -> dict[str, type[AttentionBackend]]:
    """Asked of the hook on every lookup, not cached, so a plugin registered later is seen."""
    from pagedllm.plugins.manager import load_plugins

    backends: dict[str, type[AttentionBackend]] = {}
    load_plugins().hook.register_attention_backends(register=lambda name, cls: backends.__setitem__(name, cls))
    return backends


def get_attention_backend(name: str | None, device: torch.device) -> type[AttentionBackend]:
    """Pick a backend: ``name`` if given, else ``triton`` on CUDA, ``cpu`` on CPU when its C kernel
    builds here, and ``torch`` otherwise."""
    registry = _registry()
    if name is None or name == "auto":
        if device.type == "cuda" and "triton" in registry:
            name = "triton"
        elif device.type == "cpu" and "cpu" in registry and registry["cpu"].available():
            name = "cpu"
        else:
            name = "torch"
    if name not in registry:
        raise ValueError(
            f"attention_backend={name!r} is not available; choose one of {sorted(registry)}")
    return registry[name]
