"""MLP activations: SiLU-and-multiply on a fused [gate | up] projection, tanh-GELU, and HF's others.

Each of ours is a ``CustomOp``: bound once to one C call on CPU (``pagedllm.kernels.cpu_ops``: SiLU,
tanh-GELU and exact GELU, gated or not), to the Triton kernel on CUDA for gated SiLU, else to the
torch code, which is also the kernels' oracle.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.kernels import cpu_ops
from pagedllm.models.layers.custom_op import CPU_KERNEL_DTYPES, CustomOp


class _WithCpuTwin(CustomOp):
    """An elementwise activation that has a C twin (``c_act``, one call on CPU) and a torch formula."""

    c_act: str

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        return dtype is None or dtype in CPU_KERNEL_DTYPES

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        # the C call declines what only the input decides: another dtype, rows wider than its buffers
        fused = cpu_ops.act_and_mul(x, self.c_act, False, lib=self._lib)
        return self.forward_native(x) if fused is None else fused


class Silu(_WithCpuTwin):
    """HF's ``silu`` / ``swish``: torch's ``silu``."""

    c_act = "silu"

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class FusedTanhGelu(_WithCpuTwin):
    """GPT-2's ``gelu_new`` (also ``gelu_fast``, ``gelu_pytorch_tanh``): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

    Hugging Face spells the formula out in six elementwise ops (~14% of a GPT-2 step on CPU);
    torch's ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
    """

    c_act = "gelu_tanh"

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class ExactGelu(_WithCpuTwin):
    """HF's ``gelu`` (erf form, GPT-NeoX, Falcon, BERT): torch's ``gelu``; C only where it is vectorized."""

    c_act = "gelu"

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        return cpu_ops.vectorized() and super()._kernel_applies(kind, dtype)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
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


class ActAndMul(CustomOp):
    """``act(gate) * up`` on a fused [gate | up] projection, for any activation (Gemma's tanh GELU);
    one C call on CPU when the activation has a C twin, one Triton kernel on CUDA for SiLU."""

    def __init__(self, name: str):
        super().__init__()
        self.act = get_act_fn(name)
        self.c_act = getattr(self.act, "c_act", None)
        # the oracle stays torch even when self.act itself is bound to its C twin (HF's: its forward)
        self._act_native = getattr(self.act, "forward_native", self.act.forward)

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        if kind == "cuda":
            return self.c_act == "silu"  # fused_ops.silu_and_mul is the one Triton activation
        return self.c_act is not None and (dtype is None or dtype in CPU_KERNEL_DTYPES)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return self._act_native(gate) * up

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        # the C call declines what only the input decides: another dtype, an odd width, wide rows
        fused = cpu_ops.act_and_mul(x, self.c_act, True, lib=self._lib)
        return self.forward_native(x) if fused is None else fused

    def forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused.silu_and_mul(x)


class SiluAndMul(ActAndMul):
    """The Llama family's gated MLP activation."""

    def __init__(self):
        super().__init__("silu")
