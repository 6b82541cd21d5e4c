"""SiLU-and-multiply: the gated MLP activation on a fused [gate | up] projection."""
import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class FusedTanhGelu(nn.Module):
    """GPT-2's ``gelu_new`` (also ``gelu_fast``, ``gelu_pytorch_tanh``): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

    Hugging Face spells the formula out in six elementwise ops (~14% of a GPT-2 step on CPU);
    torch's ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


_FUSED = {"gelu_new": FusedTanhGelu, "gelu_fast": FusedTanhGelu, "gelu_pytorch_tanh": FusedTanhGelu}


def get_act_fn(name: str) -> nn.Module:
    """The activation a HF config names (``gelu_new``, ``gelu_pytorch_tanh``, ``relu``...): a fused
    torch op for the tanh-GELU family, else HF's own module (its exact numerics)."""
    from transformers.activations import ACT2FN

    if name in _FUSED:
        return _FUSED[name]()

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
