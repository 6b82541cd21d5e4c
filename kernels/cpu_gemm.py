"""bf16 linear layers on CPU through oneDNN with each weight reordered once, after loading.

Why: for a bf16 weight, ``F.linear`` on CPU runs oneDNN and reorders the plain [out, in] weight
into oneDNN's blocked layout on every call; at decode sizes (a few dozen rows) that reorder is
about 40% of the call. vLLM's CPU backend prepacks its weights the same way after loading and
then drops the plain copy, as the layers here do. The packed weight is an opaque oneDNN tensor
that only ``linear`` below reads. Precision is F.linear's (float32 accumulation, one rounding
to bf16); for some shapes and row counts oneDNN picks another kernel than F.linear does, and
an element may then differ in its last bit (the tests bound it to one bf16 step and check
against a float64 product). float32 stays on ``F.linear``: packing does not speed it up there.
"""
from __future__ import annotations

import os

import torch

# Rows the packed layout is tuned for: a decode batch. Any row count works with it; with 32 the
# results equal F.linear's for most shapes up to a few hundred rows (a hint of 1 differs sooner).
BATCH_HINT = 32


def available() -> bool:
    """oneDNN with native bf16 and the packing ops in this torch; ``PAGEDLLM_CPU_PREPACK=0`` turns it off."""
    if os.environ.get("PAGEDLLM_CPU_PREPACK", "1") == "0":
        return False
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise") and bool(mkldnn._is_mkldnn_bf16_supported()))


def packable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2 and available()


def pack(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN-blocked copy of a [out, in] bf16 weight."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), BATCH_HINT)


def prepack(layer: torch.nn.Module) -> None:
    """Gives ``layer`` a ``packed_weight`` for its CPU bf16 ``weight`` and drops the plain weight (a
    tied one lives on in the module it is tied to). No-op for other weights or when packed."""
    if getattr(layer, "packed_weight", None) is None and packable(layer.weight):
        layer.packed_weight = pack(layer.weight)
        layer.weight = torch.nn.Parameter(torch.empty(0, dtype=layer.weight.dtype), requires_grad=False)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the packed weight; x [..., in] bf16."""
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])
