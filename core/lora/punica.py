"""The batched LoRA matmul of one layer over a step's tokens, grouped by adapter (SGMV's shape).

The model runner orders a step's sequences so that each adapter's tokens sit in a few contiguous
segments (``LoRAMapping.segments``: slot, first token, end token); each segment is then two small
matmuls on a slice of the batch, added in place to the base layer's output: no per-token gather of
adapter weights (BGMV) and no per-adapter batch. Tokens of the base model belong to no segment.
On CPU each segment is two torch matmuls; on CUDA the step's segments go to the Triton SGMV kernels
(``pagedllm.kernels.lora_sgmv``: one shrink and one expand launch per layer, the torch path their oracle).
``add_lora`` is the one entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class LoRAMapping:
    """A step's adapter segments over its flat token batch: ``(slot, start, end)``, ends exclusive."""

    segments: tuple[tuple[int, int, int], ...]
    num_tokens: int
    device_segments: torch.Tensor | None = None  # the segments as an int32 [S, 3] CUDA tensor (SGMV)
    longest: int = 0  # tokens of the longest segment (the kernels' row blocks)


def add_lora(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
             columns: list[int], mapping: LoRAMapping, columns_device: torch.Tensor | None = None) -> torch.Tensor:
    """``out[seg] += x[seg] @ lora_a[slot, :c].T @ lora_b[slot, :, :c].T`` for each segment.

    ``lora_a`` [slots, R, in] and ``lora_b`` [slots, out, R] hold each slot's adapter (B scaled);
    ``columns[slot]`` is how many rank columns it uses (0: the adapter leaves this layer alone);
    ``columns_device`` is the same on the GPU, read by the SGMV kernels with ``mapping.device_segments``.
    """
    if x.shape[0] != mapping.num_tokens:
        return out  # a call outside the step's batch (e.g. a profiling forward): the base layer alone
    if mapping.device_segments is not None and columns_device is not None:  # the manager sets both on CUDA
        from pagedllm.kernels import lora_sgmv

        return lora_sgmv.sgmv_add(out, x, lora_a, lora_b, columns_device, mapping.device_segments, mapping.longest)
    for slot, start, end in mapping.segments:
        c = columns[slot]
        if c:
            shrunk = x[start:end] @ lora_a[slot, :c].t()
            out[start:end].addmm_(shrunk, lora_b[slot, :, :c].t())
    return out
