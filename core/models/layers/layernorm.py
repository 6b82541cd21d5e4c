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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and len(self.normalized_shape) == 1 and (
                self.weight is None or x.dtype == self.weight.dtype):
            weight = None if self.weight is None else self._weight_f32.get(self.weight)
            bias = None if self.bias is None else self._bias_f32.get(self.bias)
            out = cpu_ops.layer_norm(x, weight, bias, self.eps)
            if out is not None:
                return out
        return super().forward(x)
