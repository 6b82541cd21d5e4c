"""MLP activations: SiLU-and-multiply on a fused [gate | up] projection, tanh-GELU, and HF's others.

On CPU, SiLU and tanh-GELU (gated or not) run as one C call (``pagedllm.kernels.cpu_ops``) when it
is available; the torch code is the path everywhere else and the C code's oracle.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.kernels import cpu_ops


def _on_cpu(x: torch.Tensor, act: str, gated: bool) -> torch.Tensor | None:
    return cpu_ops.act_and_mul(x, act, gated) if x.device.type == "cpu" else None


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, "silu", gated=True)
        if fused is not None:
            return fused
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class FusedTanhGelu(nn.Module):
    """GPT-2's ``gelu_new`` (also ``gelu_fast``, ``gelu_pytorch_tanh``): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

    Hugging Face spells the formula out in six elementwise ops (~14% of a GPT-2 step on CPU);
    torch's ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, "gelu_tanh", gated=False)
        return fused if fused is not None else F.gelu(x, approximate="tanh")


class ExactGelu(nn.Module):
    """HF's ``gelu`` (erf form, GPT-NeoX, Falcon): torch's ``gelu``; on CPU one C call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, "gelu", gated=False)
        return fused if fused is not None else F.gelu(x)


_FUSED = {"gelu_new": FusedTanhGelu, "gelu_fast": FusedTanhGelu, "gelu_pytorch_tanh": FusedTanhGelu,
          "gelu": ExactGelu}


def get_act_fn(name: str) -> nn.Module:
    """The activation a HF config names (``gelu_new``, ``gelu_pytorch_tanh``, ``relu``...): our own
    module for the GELU family (one torch op, one C call on CPU), else HF's own module."""
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
        self.fused_name = {"gelu": "gelu", "silu": "silu", "swish": "silu"}.get(name, "gelu_tanh" if name in _FUSED else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, self.fused_name, gated=True) if self.fused_name else None
        if fused is not None:
            return fused
        gate, up = x.chunk(2, dim=-1)
        return self.act(gate) * up
