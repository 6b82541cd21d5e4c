"""SiLU-and-multiply: the gated MLP activation on a fused [gate | up] projection."""
import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def get_act_fn(name: str) -> nn.Module:
    """The activation a HF config names (``gelu_new``, ``gelu_pytorch_tanh``, ``relu``...), with HF's own numerics."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"activation {name!r} is not supported; known: {sorted(ACT2FN)}")
    return ACT2FN[name]


class ActAndMul(nn.Module):
    """``act(gate) * up`` on a fused [gate | up] projection, for any activation (Gemma's tanh GELU)."""

    def __init__(self, name: str):
        super().__init__()
        self.act = get_act_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return self.act(gate) * up
