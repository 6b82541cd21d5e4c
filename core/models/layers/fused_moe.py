"""Mixture-of-experts MLP: softmax top-k routing, experts' weights stacked, tokens grouped per expert.

Tokens are sorted by chosen expert so each active expert runs one matmul over all its tokens
(one Python iteration per expert, never per token). On CPU in bf16, with small experts, a decode
batch that reaches every expert instead runs all experts densely in two matmuls (``FusedMoE._dense``). Routing
mirrors transformers: softmax in float32, ``torch.topk`` (so ties resolve the same way),
renormalised over the top k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import get_tp_rank, get_tp_world_size, tp_all_reduce
from pagedllm.kernels import cpu_gemm
from pagedllm.models.layers.activation import SiluAndMul


# The dense path (``FusedMoE._dense``) is for small experts and decode batches: all experts
# together at most 4x the hidden size wide (a dense MLP's width: then running every expert costs
# about one dense MLP, while the sparse path pays two matmul calls per active expert, a gather
# and a scatter; Mixtral-8x7B's experts are far wider and stay sparse), and at most 64 tokens
# (past that the sparse path's fewer products win: prefill is bound by products, not weights).
DENSE_MAX_WIDTH = 4
DENSE_MAX_TOKENS = 64


class FusedMoE(nn.Module):
    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool = True):
        super().__init__()
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_world_size()
        self.inter = intermediate_size // self.tp_size
        # [E, gate rows | up rows, H] and [E, H, I]: each rank holds a slice of every expert.
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.inter, hidden_size), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.inter), requires_grad=False)
        self.act = SiluAndMul()
        self.w13_weight.weight_loader = self.weight_loader
        self.w2_weight.weight_loader = self.weight_loader
        self.w2_dense = None  # [hidden, experts * inter]: every expert's w2 side by side (CPU bf16)

    def prepack_for_cpu(self) -> None:
        """CPU bf16, after loading, for small experts (see DENSE_MAX_WIDTH): w2 re-laid as one
        [hidden, experts * inter] matrix (the plain stack dropped), so a decode batch runs every
        expert in two matmuls (``_dense``)."""
        E, I, H = self.num_experts, self.inter, self.w13_weight.shape[-1]
        if self.w2_dense is None and cpu_gemm.packable(self.w13_weight[0]) and E * I <= DENSE_MAX_WIDTH * H:
            self.w2_dense = self.w2_weight.permute(1, 0, 2).reshape(self.w2_weight.shape[1], -1).contiguous()
            self.w2_weight = nn.Parameter(torch.empty(0, dtype=self.w2_dense.dtype), requires_grad=False)

    def _w2(self, e: int) -> torch.Tensor:
        if self.w2_dense is not None:
            return self.w2_dense[:, e * self.inter:(e + 1) * self.inter]
        return self.w2_weight[e]

    def _dense(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, its output scaled by the token's routing weight (0 for the
        experts not chosen): two matmuls the shape of a dense MLP's. Taken for decode batches
        where top_k * tokens >= experts, so every expert's weights are read anyway; matmuls of a
        few dozen rows are bound by reading the weights on CPU, so the extra products cost little,
        while the sparse path pays a gather, a scatter and two matmul calls per active expert."""
        T, E, I = x.shape[0], self.num_experts, self.inter
        gates = torch.zeros(T, E, dtype=x.dtype).scatter_(1, experts, weights)
        h = self.act(F.linear(x, self.w13_weight.view(E * 2 * I, -1)).view(T * E, 2 * I)).view(T, E, I)
        return F.linear((h * gates.unsqueeze(-1)).view(T, E * I), self.w2_dense)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard: tuple) -> None:
        """``shard`` = (expert or None for all experts, "w1" | "w3" | "w2" | "w13")."""
        expert, which = shard
        target = param.data if expert is None else param.data[expert]
        I, r = self.inter, self.tp_rank
        if which == "w2":
            target.copy_(loaded.narrow(-1, r * I, I))
        elif which == "w13":  # fused [gate | up] rows of the full intermediate size
            gate, up = loaded.chunk(2, dim=-2)
            target.narrow(-2, 0, I).copy_(gate.narrow(-2, r * I, I))
            target.narrow(-2, I, I).copy_(up.narrow(-2, r * I, I))
        else:
            target.narrow(-2, 0 if which == "w1" else I, I).copy_(loaded.narrow(-2, r * I, I))

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(router_logits.float(), dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        if self.w2_dense is not None and self.top_k * x.shape[0] >= self.num_experts and x.shape[0] <= DENSE_MAX_TOKENS:
            return tp_all_reduce(self._dense(x, weights, experts))
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // self.top_k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x.index_select(0, token_of)
        out = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                out[start:start + n] = F.linear(self.act(F.linear(xs[start:start + n], self.w13_weight[e])), self._w2(e))
                start += n
        out.mul_(weights.reshape(-1)[order].unsqueeze(-1))
        final = torch.zeros_like(x).index_add_(0, token_of, out)
        return tp_all_reduce(final)
