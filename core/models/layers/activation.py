"""MLP activations: SiLU-and-multiply on a fused [gate | up] projection, tanh-GELU, and HF's others.

On CPU, SiLU, tanh-GELU and exact GELU (gated or not) run as one C call (``pagedllm.kernels.cpu_ops``) when it
is available; the torch code is the path everywhere else and the C code's oracle.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.kernels import cpu_ops


def _on_cpu(x: torch.Tensor, act: str, gated: bool) -> torch.Tensor | None:
    return cpu_ops.act_and_mul(x, act, gated) if x.device.type == "cpu" else None


class _WithCpuTwin(nn.Module):
    """An elementwise activation that has a C twin (``c_act``, one call on CPU) and a torch formula."""

    c_act: str

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, self.c_act, gated=False)
        return fused if fused is not None else self.torch_forward(x)


class Silu(_WithCpuTwin):
    """HF's ``silu`` / ``swish``: torch's ``silu``."""

    c_act = "silu"

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class FusedTanhGelu(_WithCpuTwin):
    """GPT-2's ``gelu_new`` (also ``gelu_fast``, ``gelu_pytorch_tanh``): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

    Hugging Face spells the formula out in six elementwise ops (~14% of a GPT-2 step on CPU);
    torch's ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
    """

    c_act = "gelu_tanh"

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class ExactGelu(_WithCpuTwin):
    """HF's ``gelu`` (erf form, GPT-NeoX, Falcon): torch's ``gelu``."""

    c_act = "gelu"

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


_OWN = {"silu": Silu, "swish": Silu, "gelu_new": FusedTanhGelu, "gelu_fast": FusedTanhGelu,
        "gelu_pytorch_tanh": FusedTanhGelu, "gelu": ExactGelu}


def get_act_fn(name: str) -> nn.Module:
    """The activation a HF config names (``gelu_new``, ``gelu_pytorch_tanh``, ``relu``...): our own
    module for SiLU and the GELU family (one torch op, one C call on CPU), else HF's own module."""
    from transformers.activations import ACT2FN

    if name in _OWN:
        return _OWN[name]()

    if name not in ACT2FN:
        raise ValueError(f"activation {name!r} is not supported; known: {sorted(ACT2FN)}")
    return ACT2FN[name]


class ActAndMul(nn.Module):
    """``act(gate) * up`` on a fused [gate | up] projection, for any activation (Gemma's tanh GELU);
    one C call on CPU when the activation has a C twin."""

    def __init__(self, name: str):
        super().__init__()
        self.act = get_act_fn(name)
        self.c_act = getattr(self.act, "c_act", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _on_cpu(x, self.c_act, gated=True) if self.c_act else None
        if fused is not None:
            return fused
        gate, up = x.chunk(2, dim=-1)
        return self.act(gate) * up


class SiluAndMul(ActAndMul):
    """The Llama family's gated MLP activation."""

    def __init__(self):
        super().__init__("silu")
