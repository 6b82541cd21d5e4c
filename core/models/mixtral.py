"""Mixtral: the Llama/Mistral attention block with a sparse MoE MLP (top-2 of 8 experts)."""
from __future__ import annotations

import re
from typing import Iterator

import torch
from torch import nn

from pagedllm.models.layers.fused_moe import FusedMoE
from pagedllm.models.layers.linear import ReplicatedLinear
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.weight_utils import Target

_LEGACY_EXPERT = re.compile(r"\.mlp\.experts\.(\d+)\.(w[123])\.weight$")


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts)
        self.experts = FusedMoE(config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x, self.gate(x))


class MixtralForCausalLM(LlamaForCausalLM):
    """Checkpoints name experts per expert (``experts.3.w1``) or, saved by transformers 5, fused."""

    renames = ((".block_sparse_moe.", ".mlp."),)

    def mlp(self, config, layer_idx: int) -> nn.Module:
        return MixtralSparseMoeBlock(config)

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        m = _LEGACY_EXPERT.search(name)
        if m:
            target = f"{name[:m.start()]}.mlp.experts.{'w2' if m.group(2) == 'w2' else 'w13'}_weight"
            yield target, tensor, (int(m.group(1)), m.group(2))
        elif name.endswith(".mlp.experts.gate_up_proj"):
            yield name.replace("gate_up_proj", "w13_weight"), tensor, (None, "w13")
        elif name.endswith(".mlp.experts.down_proj"):
            yield name.replace("down_proj", "w2_weight"), tensor, (None, "w2")
        else:
            yield from super().split_fused(name, tensor)
