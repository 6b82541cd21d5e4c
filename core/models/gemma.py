"""Gemma and Gemma 2: sqrt(hidden)-scaled embeddings, (1 + weight) RMSNorm, tanh-GELU gated MLP.

Gemma 2 adds sandwich norms around attention and MLP, ``query_pre_attn_scalar`` scaling,
attention and final-logit soft-capping, and sliding-window attention on alternating layers.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.kernels import cpu_ops
from pagedllm.models.layers.activation import ActAndMul
from pagedllm.models.layers.layernorm import Float32Weight
from pagedllm.models.layers.attention import Attention, layer_sliding_window
from pagedllm.models.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, rope_parameters
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped


class GemmaRMSNorm(nn.Module):
    """RMSNorm scaled by ``1 + weight``, all in float32 (Gemma checkpoints store weight - 1)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)
        self._scale_f32 = Float32Weight(lambda w: 1.0 + w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":  # one C call (float32 normed * (1 + weight), rounded once)
            fused = cpu_ops.rms_norm(x, self._scale_f32.get(self.weight), self.eps, round_before_weight=False)
            if fused is not None:
                return fused
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


class GemmaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int, gemma2: bool):
        super().__init__()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, kv_heads,
                                          bias=getattr(config, "attention_bias", False))
        self.nh, self.nkv = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(heads * self.head_dim, config.hidden_size,
                                        bias=getattr(config, "attention_bias", False))
        self.rotary_emb = RotaryEmbedding(self.head_dim, self.head_dim, max_position, rope_parameters(config))
        if gemma2:
            scale = config.query_pre_attn_scalar ** -0.5
            window = layer_sliding_window(config, layer_idx, layer_idx % 2 == 0)
            cap = getattr(config, "attn_logit_softcapping", None)
        else:
            scale, window, cap = self.head_dim ** -0.5, None, None
        self.attn = Attention(self.nh, self.head_dim, scale, self.nkv, sliding_window=window, logits_soft_cap=cap)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T, D = hidden.shape[0], self.head_dim
        q, k, v = self.qkv_proj(hidden).split([self.nh * D, self.nkv * D, self.nkv * D], dim=-1)
        q, k = self.rotary_emb(positions, q.view(T, self.nh, D), k.view(T, self.nkv, D))
        return self.o_proj(self.attn(q.reshape(T, -1), k.reshape(T, -1), v))


class GemmaMLP(nn.Module):
    def __init__(self, config, act: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size)
        self.act = ActAndMul(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int, gemma2: bool):
        super().__init__()
        eps, hidden = config.rms_norm_eps, config.hidden_size
        act = (getattr(config, "hidden_activation", None) if gemma2 else None) or config.hidden_act
        self.self_attn = GemmaAttention(config, layer_idx, max_position, gemma2)
        self.mlp = GemmaMLP(config, act)
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.gemma2 = gemma2
        if gemma2:
            self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
            self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden))
        if not self.gemma2:
            hidden = hidden + attn
            return hidden + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + self.post_attention_layernorm(attn)
        return hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))


class GemmaModel(nn.Module):
    def __init__(self, config, max_position: int, gemma2: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GemmaDecoderLayer(config, i, max_position, gemma2)
                                    for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.normalizer = config.hidden_size ** 0.5

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        hidden = hidden * torch.tensor(self.normalizer, dtype=hidden.dtype)  # rounded to the dtype, as in HF
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return self.norm(hidden)


class GemmaForCausalLM(nn.Module):
    gemma2 = False
    packed = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
              "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.model = GemmaModel(config, max_position or config.max_position_embeddings, self.gemma2)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        self.lm_head.weight = self.model.embed_tokens.weight  # Gemma always ties
        self.final_soft_cap = getattr(config, "final_logit_softcapping", None) if self.gemma2 else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden)
        if self.final_soft_cap:  # in float32 (the sampler's dtype anyway), in place: [B, vocab] is large
            logits = logits.float().div_(self.final_soft_cap).tanh_().mul_(self.final_soft_cap)
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def mapper(name: str, tensor: torch.Tensor):
            if name.startswith("lm_head.") or "rotary_emb.inv_freq" in name:
                return
            for fragment, (fused, shard) in self.packed.items():
                if f".{fragment}." in name:
                    yield name.replace(fragment, fused), tensor, shard
                    return
            yield name, tensor, None

        return load_mapped(self, weights, mapper)


class Gemma2ForCausalLM(GemmaForCausalLM):
    gemma2 = True
