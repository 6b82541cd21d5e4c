"""fp8 MoE experts (vLLM's ``Fp8MoEMethod``, online): each expert of a ``FusedMoE`` as two ``Fp8Weight``s.

Why its own loader: a ``FusedMoE`` stacks every expert in two parameters (``w13_weight`` [E, 2I, H],
``w2_weight`` [E, H, I]); filling those dense would hold a layer's experts in float before quantizing.
Here each expert's gate/up rows and down rows fill a float32 buffer of that expert only, quantized per
output row (amax / 448) as soon as its last part arrived. A tensor-parallel rank keeps a slice of each
down row (the intermediate columns), scaled by the whole row's amax, as a row-parallel linear layer.
After loading, the codes and scales are stacked into ``w13_weight``/``w13_weight_scale`` and
``w2_weight``/``w2_weight_scale`` parameters (float8_e4m3fn, float32), and each expert multiplies by
views of them.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.quantization.fp8_weight import Fp8Weight, quantize_per_channel

PARTS = {"w13": {"w1", "w3"}, "w2": {"w2"}}


class Fp8MoEWeights:
    """The fp8 experts of one ``FusedMoE`` (``moe.fp8``): ``w13[e]`` [2I, H] and ``w2[e]`` [H, I]."""

    def __init__(self, moe: nn.Module, name: str = ""):
        self.name = name
        self.num_experts, self.inter = moe.num_experts, moe.inter
        self.hidden = moe.w13_weight.shape[-1]
        self.tp_rank = moe.tp_rank
        self.device = moe.w13_weight.device
        self.w13: list[Fp8Weight | None] = [None] * self.num_experts
        self.w2: list[Fp8Weight | None] = [None] * self.num_experts
        self.pending: dict[tuple[str, int], tuple[torch.Tensor, set, list]] = {}  # buffer, parts, [amax]

    @classmethod
    def install(cls, moe: nn.Module, name: str = "") -> "Fp8MoEWeights":
        """Replace the experts' dense stacks (never filled, so never resident) by placeholders that load here."""
        moe.fp8 = weights = cls(moe, name)
        for param_name in ("w13_weight", "w2_weight"):
            param = nn.Parameter(torch.empty(0, dtype=torch.float8_e4m3fn), requires_grad=False)
            param.weight_loader = weights.load
            setattr(moe, param_name, param)
        return weights

    def load(self, param: nn.Parameter, loaded: torch.Tensor, shard: tuple) -> None:
        """``shard`` = (expert or None for all experts, "w1" | "w3" | "w2" | "w13"), as ``FusedMoE.weight_loader``."""
        expert, which = shard
        for e in range(self.num_experts) if expert is None else (expert,):
            self._load_expert(e, which, loaded if expert is not None else loaded[e])

    def _load_expert(self, e: int, which: str, part: torch.Tensor) -> None:
        kind = "w2" if which == "w2" else "w13"
        if (self.w13 if kind == "w13" else self.w2)[e] is not None:
            raise ValueError(f"fp8 experts {self.name}: expert {e} {which} loaded twice")
        key = (kind, e)
        if key not in self.pending:
            shape = (2 * self.inter, self.hidden) if kind == "w13" else (self.hidden, self.inter)
            self.pending[key] = (torch.zeros(shape, dtype=torch.float32), set(), [None])
        buffer, parts, amax = self.pending[key]
        I, r = self.inter, self.tp_rank
        if which == "w2":  # rows are hidden features; this rank holds intermediate columns r*I .. r*I+I-1
            amax[0] = part.detach().abs().amax(dim=-1).to(torch.float32)
            buffer.copy_(part.narrow(-1, r * I, I))
            parts.add("w2")
        elif which == "w13":  # fused [gate | up] rows of the full intermediate size
            gate, up = part.chunk(2, dim=-2)
            buffer[:I].copy_(gate.narrow(-2, r * I, I))
            buffer[I:].copy_(up.narrow(-2, r * I, I))
            parts.update(("w1", "w3"))
        else:
            buffer.narrow(-2, 0 if which == "w1" else I, I).copy_(part.narrow(-2, r * I, I))
            parts.add(which)
        if parts >= PARTS[kind]:
            weight = Fp8Weight(*quantize_per_channel(buffer, amax[0]))
            (self.w13 if kind == "w13" else self.w2)[e] = weight
            del self.pending[key]

    def finish(self, moe: nn.Module) -> None:
        """Every expert complete (else an error naming the first missing part); stack into parameters."""
        for kind, weights in (("w13", self.w13), ("w2", self.w2)):
            missing = [e for e, w in enumerate(weights) if w is None]
            if missing:
                raise ValueError(f"fp8 experts {self.name}: the checkpoint gave no complete {kind} for expert "
                                 f"{missing[0]} ({len(missing)} of {self.num_experts} missing)")
            codes = nn.Parameter(torch.stack([w.codes for w in weights]).to(self.device), requires_grad=False)
            scales = nn.Parameter(torch.stack([w.scales for w in weights]).to(self.device), requires_grad=False)
            setattr(moe, f"{kind}_weight", codes)
            setattr(moe, f"{kind}_weight_scale", scales)
            weights[:] = [Fp8Weight(codes.data[e], scales.data[e]) for e in range(self.num_experts)]

    def expert(self, e: int, x: torch.Tensor, act) -> torch.Tensor:
        """Expert ``e``'s MLP on its tokens ``x`` [n, H]: down(act(gate_up(x))), in x's dtype."""
        h = self.w13[e].matmul(x).to(x.dtype)
        return self.w2[e].matmul(act(h)).to(x.dtype)
