"""Mixtral: the Llama/Mistral attention block with a sparse MoE MLP (top-2 of 8 experts)."""
from __future__ import annotations

import copy
import re
from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.fused_moe import FusedMoE
from pagedllm.models.layers.linear import ReplicatedLinear
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.weight_utils import load_mapped

_LEGACY_EXPERT = re.compile(r"\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts)
        self.experts = FusedMoE(config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x, self.gate(x))


class MixtralForCausalLM(LlamaForCausalLM):
    def __init__(self, config, max_position: int | None = None):
        dense = copy.copy(config)  # the Llama base builds dense MLPs we replace: keep them 1 wide
        dense.intermediate_size = 1
        super().__init__(dense, max_position)
        self.config = config
        for layer in self.model.layers:
            layer.mlp = MixtralSparseMoeBlock(config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoints name experts per expert (``experts.3.w1``) or, saved by transformers 5, fused."""
        tied = getattr(self.config, "tie_word_embeddings", False)

        def mapper(name: str, tensor: torch.Tensor):
            if "rotary_emb.inv_freq" in name or (tied and name.startswith("lm_head.")):
                return
            m = _LEGACY_EXPERT.search(name)
            if m:
                layer = name[:m.start()]
                target = f"{layer}.mlp.experts.{'w2' if m.group(2) == 'w2' else 'w13'}_weight"
                yield target, tensor, (int(m.group(1)), m.group(2))
                return
            name = name.replace(".block_sparse_moe.", ".mlp.")
            if name.endswith(".mlp.experts.gate_up_proj"):
                yield name.replace("gate_up_proj", "w13_weight"), tensor, (None, "w13")
                return
            if name.endswith(".mlp.experts.down_proj"):
                yield name.replace("down_proj", "w2_weight"), tensor, (None, "w2")
                return
            for fragment, (fused, shard) in self.packed_modules_mapping.items():
                if f".{fragment}." in name:
                    yield name.replace(fragment, fused), tensor, shard
                    return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)
