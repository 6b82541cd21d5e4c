"""RMSNorm with an optional fused residual add, Gemma's (1 + weight) RMSNorm, and LayerNorm, computed
in float32 like Hugging Face.

Each is a ``CustomOp``: bound once to one C call on CPU (``pagedllm.kernels.cpu_ops``), to the Triton
kernel on CUDA where one computes the same thing (RMSNorm), else to the torch code below, which is
also the kernels' oracle.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.kernels import cpu_ops
from pagedllm.models.layers.custom_op import CPU_KERNEL_DTYPES, CustomOp, float32_copy


def _cpu_takes(weight: torch.Tensor | None, cols: int, dtype: torch.dtype | None) -> bool:
    """Whether the C norm computes what the torch one does: the same dtype in and out (torch
    promotes bf16 activations times an fp32 weight to fp32, the C call keeps bf16), a dtype it
    takes, rows within its buffers."""
    if weight is not None and (weight.dtype not in CPU_KERNEL_DTYPES or dtype not in (None, weight.dtype)):
        return False
    return cols <= cpu_ops.MAX_COLS and (dtype is None or dtype in CPU_KERNEL_DTYPES)


class RMSNorm(CustomOp):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        if kind == "cpu":
            return _cpu_takes(self.weight, self.weight.shape[0], dtype)
        # Triton's kernel rounds the normed value to x's dtype before the weight, as below, and
        # returns x's dtype: the same as torch when the weight has that dtype too
        return dtype in (None, self.weight.dtype)

    def _prepare(self, choice: str) -> None:
        self._dtype = self.weight.dtype
        self._weight_f32 = float32_copy(self.weight) if choice != "native" else None

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def forward_native(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def forward_cpu(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        # Per call only what the input decides: x of another dtype than the weight's (a caller
        # outside the model) would round differently, and the C call declines layouts it cannot take.
        fused = cpu_ops.rms_norm(x, self._weight_f32, self.eps, residual, lib=self._lib) \
            if x.dtype is self._dtype else None
        return self.forward_native(x, residual) if fused is None else fused

    def forward_cuda(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.dtype is not self._dtype:  # as on CPU: torch would promote to the weight's dtype
            return self.forward_native(x, residual)
        return self._fused.rms_norm(x, self._weight_f32, self.eps, residual)


class GemmaRMSNorm(CustomOp):
    """RMSNorm scaled by ``1 + weight``, all in float32 (Gemma checkpoints store weight - 1).

    No Triton path: the Triton RMSNorm rounds before the weight, Gemma multiplies first."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        # the result is always x's dtype, so the weight's dtype does not matter here
        return self.weight.shape[0] <= cpu_ops.MAX_COLS and dtype in (None, *CPU_KERNEL_DTYPES)

    def _prepare(self, choice: str) -> None:
        self._scale_f32 = 1.0 + float32_copy(self.weight) if choice == "cpu" else None

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        # one C call: float32 normed * (1 + weight), rounded once; it declines other dtypes of x
        fused = cpu_ops.rms_norm(x, self._scale_f32, self.eps, round_before_weight=False, lib=self._lib)
        return self.forward_native(x) if fused is None else fused


def _sum(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    s = parts[0]
    for p in parts[1:]:
        s = s + p
    return s


class LayerNorm(CustomOp, nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and checkpoint names) with one C call on CPU."""

    bound_methods = ("forward", "add_and_norm")
    _dtype: torch.dtype | None = None
    _params_f32: tuple | None = None  # (weight, bias) in float32 once bound to C

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        # without AVX-512 the C loop is scalar and torch's layer_norm is faster (cpu_ops.vectorized)
        return (cpu_ops.vectorized() and len(self.normalized_shape) == 1
                and _cpu_takes(self.weight, self.normalized_shape[0], dtype))

    def _prepare(self, choice: str) -> None:
        self._dtype = None if self.weight is None else self.weight.dtype
        self._params_f32 = (float32_copy(self.weight), float32_copy(self.bias)) if choice == "cpu" else None

    def _c_norm(self, x: torch.Tensor, *addends: torch.Tensor, also: "LayerNorm | None" = None):
        """The C call, or None where this call's inputs decide against it: x of another dtype than
        the weights' (torch would promote), or a second norm ``also`` not bound to C with our eps."""
        if self._dtype is not None and x.dtype is not self._dtype:
            return None
        second = None
        if also is not None:
            if also.bound_to is None:  # never bound (used outside a runner): bind it as its own call would
                also._bind_lazily((x,))
            if also._params_f32 is None or also.eps != self.eps or also._dtype is not self._dtype:
                return None
            second = also._params_f32
        return cpu_ops.layer_norm(x, *self._params_f32, self.eps, *addends, second=second, lib=self._lib)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        out = self._c_norm(x)
        return self.forward_native(x) if out is None else out

    def add_and_norm(self, *parts: torch.Tensor, also: "LayerNorm | None" = None) -> tuple[torch.Tensor, ...]:
        """``(norm(s), s)`` for the residual stream ``s = parts[0] + parts[1] + ...`` (up to three),
        added left to right as the Hugging Face block writes it; ``(norm(s), also(s), s)`` with a
        second norm ``also`` of the same stream.

        Why: a block that adds two outputs to its input (GPT-NeoX's and GPT-J's parallel attention
        and MLP) would pay two more passes over memory and two torch dispatches per layer, and
        GPT-NeoX's two norms of one input would each compute its mean and variance; on CPU all of
        it is one C call. (Reached only while unbound: binding replaces it, as ``forward``.)
        """
        self._bind_lazily(parts)
        return self.add_and_norm(*parts, also=also)

    def add_and_norm_native(self, *parts: torch.Tensor, also: "LayerNorm | None" = None):
        s = _sum(parts)
        return (self.forward_native(s), s) if also is None else (self.forward_native(s), also.forward_native(s), s)

    def add_and_norm_cpu(self, *parts: torch.Tensor, also: "LayerNorm | None" = None):
        if len(parts) > 1 or also is not None:
            fused = self._c_norm(*parts, also=also)
            if fused is not None:
                return fused if len(parts) > 1 else (*fused, parts[0])
        s = _sum(parts)
        return (self.forward(s), s) if also is None else (self.forward(s), also(s), s)
