"""Mixture-of-experts MLP: softmax top-k routing, experts' weights stacked, tokens grouped per expert.

Tokens are sorted by chosen expert so each active expert runs one matmul over all its tokens
(one Python iteration per expert, never per token). On CPU in bf16, small experts instead run
all together on every token in two matmuls (``FusedMoE._dense``). Routing
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


# The dense path (``FusedMoE._dense``, CPU bf16) is for small experts: all of them together at
# most this many times the hidden size wide, as a dense MLP is. Running every expert on every
# token then costs about one dense MLP (bounded, whatever the batch), while the sparse path pays
# two matmul calls per active expert, a gather and a scatter. Wider experts (Mixtral-8x7B's)
# would multiply the products by experts / top_k and stay sparse.
DENSE_MAX_WIDTH = 4


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
        self.dense = None  # (w13 [experts * 2 * inter, hidden], w2 [hidden, experts * inter]), packed
        self.fp8 = None  # a quantization.fp8_moe.Fp8MoEWeights when the experts run fp8 weights

    def prepack_for_cpu(self) -> None:
        """CPU bf16, after loading, small experts (see DENSE_MAX_WIDTH): both stacks become one
        oneDNN-packed matrix each for ``_dense``; the plain stacks are dropped."""
        if self.fp8 is not None:
            return
        E, I, H = self.num_experts, self.inter, self.w13_weight.shape[-1]
        if self.dense is None and cpu_gemm.packable(self.w13_weight[0]) and E * I <= DENSE_MAX_WIDTH * H:
            w2 = self.w2_weight.permute(1, 0, 2).reshape(H, E * I)  # experts side by side
            self.dense = (cpu_gemm.pack(self.w13_weight.view(E * 2 * I, H)), cpu_gemm.pack(w2))
            dtype = self.w13_weight.dtype
            self.w13_weight = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            self.w2_weight = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)

    def _dense(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, its output scaled by the token's routing weight (0 for the
        experts not chosen): two matmuls the shape of a dense MLP's, no gather or scatter."""
        T, E, I = x.shape[0], self.num_experts, self.inter
        w13, w2 = self.dense
        gates = torch.zeros(T, E, dtype=x.dtype).scatter_(1, experts, weights)
        h = self.act(cpu_gemm.linear(x, w13, None).view(T * E, 2 * I)).view(T, E, I)
        return cpu_gemm.linear((h * gates.unsqueeze(-1)).view(T, E * I), w2, None)

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
        if self.dense is not None:
            return tp_all_reduce(self._dense(x, weights, experts))
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // self.top_k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x.index_select(0, token_of)
        out = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n and self.fp8 is not None:
                out[start:start + n] = self.fp8.expert(e, xs[start:start + n], self.act)
                start += n
            elif n:
                out[start:start + n] = F.linear(self.act(F.linear(xs[start:start + n], self.w13_weight[e])),
                                                self.w2_weight[e])
                start += n
        out.mul_(weights.reshape(-1)[order].unsqueeze(-1))
        final = torch.zeros_like(x).index_add_(0, token_of, out)
        return tp_all_reduce(final)
