"""The two MLP shapes of the native families, with one set of parameter names each.

``GatedMLP``: ``down(act(gate) * up)`` on one fused ``gate_up_proj`` (Llama, Baichuan, Gemma,
ChatGLM); ``MLP``: ``fc_out(act(fc_in(x)))`` (GPT-2, OPT, GPT-J, GPT-NeoX, Phi, Falcon). Each
model's rename table maps its checkpoint names onto these.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.models.layers.activation import ActAndMul, SiluAndMul, get_act_fn
from pagedllm.models.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)
        self.act = SiluAndMul() if act == "silu" else ActAndMul(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = True):
        super().__init__()
        self.fc_in = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias)
        self.fc_out = RowParallelLinear(intermediate_size, hidden_size, bias=bias)
        self.act = get_act_fn(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))
