"""``CustomOp``: a layer whose implementation (torch, C on CPU, Triton on CUDA) is chosen once, at load.

As vLLM's ``CustomOp``: a layer writes ``forward_native`` (plain torch: the oracle, and the path
wherever no kernel applies) and, where a kernel exists, ``forward_cpu`` (the C ops of
``pagedllm.kernels.cpu_ops``) and ``forward_cuda`` (the Triton ops of ``pagedllm.kernels.fused_ops``).
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.kernels import cpu_ops

# The activation dtypes the C ops take (the Triton ones take float16 too).
CPU_KERNEL_DTYPES = (torch.bfloat16, torch.float32)


def triton_ops():
    """``pagedllm.kernels.fused_ops``, or None where triton is not installed.

    Imported when a layer binds for CUDA, never at import time: ``triton.jit`` reads
    ``TRITON_INTERPRET`` when a kernel is decorated, and CPU-only runs should not load triton."""
    try:
        from pagedllm.kernels import fused_ops
    except ImportError:
        return None
    return fused_ops


class CustomOp(nn.Module):
    """A layer with a torch implementation and kernel twins, bound to one of them once.

    Why: whether a kernel computes what the torch code does depends on the device, the dtype,
    the weights and whether the kernel library builds, all fixed once the model is loaded.
    ``bind_forward`` decides it then (the model runner calls it after loading and prepacking),
    makes the fp32 weight copies the kernels read, and replaces ``forward`` (and any other name
    in ``bound_methods``) with the chosen method itself, so a call has no decision left.

    A module never bound (built and called directly, as tests do) binds itself on its first
    call, for that input's device: the path a runner would pick. Moving a bound module or
    changing its weights afterwards needs another ``bind_forward``.
    """

    # each name N is replaced on binding by N_cpu, N_cuda or N_native
    bound_methods: tuple[str, ...] = ("forward",)
    bound_to: str | None = None  # "cpu", "cuda" or "native" once bound
    bound_device: torch.device | None = None

    def bind_forward(self, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
        """Choose this layer's path for ``device`` and activations of ``dtype`` (None: its weights'
        dtype); returns the choice, ``"cpu"``, ``"cuda"`` or ``"native"``."""
        kind = torch.device(device).type
        self._lib = cpu_ops.load() if kind == "cpu" and hasattr(self, "forward_cpu") else None
        self._fused = triton_ops() if kind == "cuda" and hasattr(self, "forward_cuda") else None
        usable = self._lib is not None or self._fused is not None
        choice = kind if usable and self._kernel_applies(kind, dtype) else "native"
        if choice == "native":
            self._lib = self._fused = None
        self._prepare(choice)
        for name in self.bound_methods:
            setattr(self, name, getattr(self, f"{name}_{choice}"))  # an instance attribute shadows the class's
        self.bound_to, self.bound_device = choice, torch.device(device)
        return choice

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        """Whether ``forward_<kind>`` computes what ``forward_native`` does, for these weights and
        activations of ``dtype``: the checks that once ran on every call."""
        return True

    def _prepare(self, choice: str) -> None:
        """Precompute what the chosen path reads (float32 weight copies, a rotary table)."""

    def _bind_lazily(self, args) -> None:
        x = next(a for a in args if isinstance(a, torch.Tensor))
        self.bind_forward(x.device)

    def forward(self, *args, **kwargs):
        """Reached only while unbound: binds for the input's device, then runs the bound method."""
        self._bind_lazily(args)
        return self.forward(*args, **kwargs)


def float32_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    """The weight in float32, contiguous, as the kernels read it (made at bind time, once; a float32
    weight is itself)."""
    return None if t is None else t.detach().float().contiguous()
