"""Llama family: Llama 1/2/3 (incl. llama3 RoPE scaling), Mistral, Qwen2 (qkv bias), SmolLM.

GQA via ``num_key_value_heads``; tied or untied embeddings; q/k/v and gate/up projections
fused into single matmuls, loaded through each parameter's ``weight_loader``.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import SiluAndMul
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import get_rope, partial_rotary_factor, rope_parameters
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAttention(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool, max_position: int):
        super().__init__()
        self.head_dim = _head_dim(config)
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, config.num_attention_heads,
                                          num_kv_heads, bias=qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=o_bias)
        rotary_dim = int(self.head_dim * partial_rotary_factor(config))  # < head_dim in Phi-4-mini
        self.rotary_emb = get_rope(self.head_dim, rotary_dim, max_position, rope_parameters(config))
        sliding_window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) is False:
            sliding_window = None
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads,
                              sliding_window=sliding_window)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q.view(T, self.num_heads, self.head_dim),
                               k.view(T, self.num_kv_heads, self.head_dim))  # adjacent: one rotation call
        return self.o_proj(self.attn(q, k, v))


class LlamaMLP(nn.Module):
    def __init__(self, config, bias: bool = False):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias)
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported by the Llama model (silu)")
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool, max_position: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, qkv_bias, o_bias, max_position)
        self.mlp = LlamaMLP(config, bias=getattr(config, "mlp_bias", False))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool, max_position: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, qkv_bias, o_bias, max_position) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        max_position = max_position or getattr(config, "max_position_embeddings", 4096)
        qkv_bias, o_bias = self.attention_biases(config)
        self.model = LlamaModel(config, qkv_bias, o_bias, max_position)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (HF names) into the fused parameters; returns what was loaded."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        tied = getattr(self.config, "tie_word_embeddings", False)
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (tied and name.startswith("lm_head.")):
                continue
            for fragment, (fused, shard_id) in self.packed_modules_mapping.items():
                if f".{fragment}." in name:
                    target = name.replace(fragment, fused)
                    param = params[target]
                    param.weight_loader(param, tensor, shard_id)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no parameter in {type(self).__name__}")
                param = params[name]
                getattr(param, "weight_loader", _default_loader)(param, tensor)
                loaded.add(name)
        missing = {n for n in params if n not in loaded and not (tied and n.startswith("lm_head."))}
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:8]}")
        return loaded


def _default_loader(param: nn.Parameter, tensor: torch.Tensor) -> None:
    param.data.copy_(tensor)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        return True, False
