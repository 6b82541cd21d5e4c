"""RMSNorm with an optional fused residual add, and LayerNorm, computed in float32 like Hugging Face.

On CPU each goes through one C call (``pagedllm.kernels.cpu_ops``) when it is available; the
torch code below is the path everywhere else and the C code's oracle.
"""
import torch
from torch import nn

from pagedllm.kernels import cpu_ops


class Float32Weight:
    """A float32 copy of a norm's weight, remade when the weight is replaced or changed in place."""

    def __init__(self, transform=None):
        self.transform = transform or (lambda w: w)
        self.key, self.value = None, None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if key != self.key:
            self.value = self.transform(weight.detach().float()).contiguous()
            self.key = key
        return self.value


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self._weight_f32 = Float32Weight()

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.device.type == "cpu" and x.dtype == self.weight.dtype:
            fused = cpu_ops.rms_norm(x, self._weight_f32.get(self.weight), self.eps, residual)
            if fused is not None:
                return fused
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and checkpoint names) with one C call on CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._weight_f32, self._bias_f32 = Float32Weight(), Float32Weight()

    def _c_takes(self, x: torch.Tensor) -> bool:
        """Whether the C norm can stand in for this one on x (a CPU tensor)."""
        return len(self.normalized_shape) == 1 and (self.weight is None or x.dtype == self.weight.dtype)

    def _c_norm(self, x: torch.Tensor, *addends: torch.Tensor, also: "LayerNorm | None" = None):
        if x.device.type != "cpu" or not self._c_takes(x):
            return None
        second = None
        if also is not None:
            if not also._c_takes(x) or also.eps != self.eps:
                return None
            second = also._f32_params()
        return cpu_ops.layer_norm(x, *self._f32_params(), self.eps, *addends, second=second)

    def _f32_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (None if self.weight is None else self._weight_f32.get(self.weight),
                None if self.bias is None else self._bias_f32.get(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._c_norm(x)
        return super().forward(x) if out is None else out

    def add_and_norm(self, *parts: torch.Tensor, also: "LayerNorm | None" = None) -> tuple[torch.Tensor, ...]:
        """``(norm(s), s)`` for the residual stream ``s = parts[0] + parts[1] + ...`` (up to three),
        added left to right as the Hugging Face block writes it; ``(norm(s), also(s), s)`` with a
        second norm ``also`` of the same stream.

        Why: a block that adds two outputs to its input (GPT-NeoX's and GPT-J's parallel attention
        and MLP) would pay two more passes over memory and two torch dispatches per layer, and
        GPT-NeoX's two norms of one input would each compute its mean and variance; on CPU all of
        it is one C call.
        """
        if len(parts) > 1 or also is not None:
            fused = self._c_norm(*parts, also=also)
            if fused is not None:
                return fused if len(parts) > 1 else (*fused, parts[0])
        s = parts[0]
        for p in parts[1:]:
            s = s + p
        return (self(s), s) if also is None else (self(s), also(s), s)
