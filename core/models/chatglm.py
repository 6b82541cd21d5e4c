"""ChatGLM2 / ChatGLM3 (and GLM-4 text models of the same layout), published as ``trust_remote_code``.

The block, as THUDM's ``modeling_chatglm.py`` defines it:

- one fused ``query_key_value`` projection (bias when ``add_qkv_bias`` or ``add_bias_linear``);
  with ``multi_query_attention`` the keys/values have ``multi_query_group_num`` heads (GQA);
  the head size is ``kv_channels``;
- rotary on the first half of each head only, rotating interleaved pairs (GPT-J style), base
  ``10000 * rope_ratio`` (``rope_ratio`` > 1 in the 32k/128k variants);
- ``rmsnorm`` picks RMSNorm or LayerNorm; ``apply_residual_connection_post_layernorm`` makes the
  residual branch start from the normed input; ``post_layer_norm`` adds ``final_layernorm``;
- SwiGLU MLP: ``dense_h_to_4h`` yields both halves (``silu(a) * b``), biases if ``add_bias_linear``;
- ``padded_vocab_size`` embeddings and a separate ``output_layer`` (never tied).

Checkpoint names: ``transformer.embedding.word_embeddings``, ``transformer.encoder.layers.N.*``,
``transformer.encoder.final_layernorm``, ``transformer.output_layer``; the module tree below uses
the same names. ChatGLM-6B v1 (GLM's 2D positions) is a different model and is refused.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.activation import SiluAndMul
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.layernorm import LayerNorm, RMSNorm
from pagedllm.models.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.rotary_embedding import get_rope
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import load_mapped


def check_supported(config) -> None:
    """Refuse what this file does not model, with the reason, instead of computing garbage."""
    if getattr(config, "position_encoding_2d", None) is not None or getattr(config, "padded_vocab_size", None) is None:
        raise ValueError("ChatGLM-6B v1 (GLM 2D position encoding, `position_encoding_2d`) is not supported; "
                         "ChatGLM2, ChatGLM3 and GLM-4 text checkpoints are (they have `padded_vocab_size`)")
    if getattr(config, "vision_config", None) is not None:
        raise ValueError("ChatGLM/GLM-4V vision models (`vision_config`) are not supported; text-only checkpoints are")
    if getattr(config, "quantization_bit", 0):
        raise ValueError(f"quantization_bit={config.quantization_bit}: THUDM's int4/int8 ChatGLM checkpoints are not "
                         "supported; use the float16/bfloat16 release")
    if getattr(config, "pre_seq_len", None) is not None:
        raise ValueError(f"pre_seq_len={config.pre_seq_len}: P-tuning v2 prefix encoders are not supported")
    if getattr(config, "original_rope", True) is False:
        raise ValueError("original_rope=False is not supported (ChatGLM2/3 rotate interleaved pairs)")


def _norm(config) -> nn.Module:
    if getattr(config, "rmsnorm", True):
        return RMSNorm(config.hidden_size, config.layernorm_epsilon)
    return LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class GLMAttention(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        heads = config.num_attention_heads
        self.head_dim = getattr(config, "kv_channels", None) or config.hidden_size // heads
        kv_heads = config.multi_query_group_num if getattr(config, "multi_query_attention", False) else heads
        self.total_num_heads, self.total_num_kv_heads = heads, kv_heads
        bias = bool(getattr(config, "add_bias_linear", False) or getattr(config, "add_qkv_bias", False))
        self.query_key_value = QKVParallelLinear(config.hidden_size, self.head_dim, heads, kv_heads, bias=bias)
        self.num_heads, self.num_kv_heads = self.query_key_value.num_heads, self.query_key_value.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.dense = RowParallelLinear(heads * self.head_dim, config.hidden_size,
                                       bias=bool(getattr(config, "add_bias_linear", False)))
        base = 10000.0 * float(getattr(config, "rope_ratio", 1) or 1)
        self.rotary_emb = get_rope(self.head_dim, self.head_dim // 2, max_position,
                                   {"rope_type": "default", "rope_theta": base}, is_neox_style=False)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        T = hidden.shape[0]
        q, k, v = self.query_key_value(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q.view(T, self.num_heads, self.head_dim),
                               k.view(T, self.num_kv_heads, self.head_dim))
        return self.dense(self.attn(q, k, v))


class GLMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = bool(getattr(config, "add_bias_linear", False))
        self.dense_h_to_4h = MergedColumnParallelLinear(config.hidden_size, [config.ffn_hidden_size] * 2, bias=bias)
        self.act = SiluAndMul()
        self.dense_4h_to_h = RowParallelLinear(config.ffn_hidden_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GLMBlock(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.residual_from_norm = bool(getattr(config, "apply_residual_connection_post_layernorm", False))
        self.input_layernorm = _norm(config)
        self.self_attention = GLMAttention(config, max_position)
        self.post_attention_layernorm = _norm(config)
        self.mlp = GLMMLP(config)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        normed = self.input_layernorm(hidden)
        hidden = (normed if self.residual_from_norm else hidden) + self.self_attention(positions, normed)
        normed = self.post_attention_layernorm(hidden)
        return (normed if self.residual_from_norm else hidden) + self.mlp(normed)


class GLMTransformer(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, max_position) for _ in range(config.num_layers))
        self.final_layernorm = _norm(config) if getattr(config, "post_layer_norm", True) else None

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return hidden if self.final_layernorm is None else self.final_layernorm(hidden)


class GLMEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.padded_vocab_size, config.hidden_size)


class ChatGLMModel(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.embedding = GLMEmbedding(config)
        self.encoder = GLMTransformer(config, max_position)
        self.output_layer = ParallelLMHead(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.encoder(positions, self.embedding.word_embeddings(input_ids))


class ChatGLMForCausalLM(nn.Module):
    """Registered as ``ChatGLMModel`` and ``ChatGLMForConditionalGeneration`` (the published names)."""

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        check_supported(config)
        self.config = config
        self.transformer = ChatGLMModel(config, max_position or getattr(config, "seq_length", None) or 2048)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.output_layer.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        attn = self.transformer.encoder.layers[0].self_attention
        q_size, kv_size = attn.total_num_heads * attn.head_dim, attn.total_num_kv_heads * attn.head_dim

        def mapper(name: str, tensor: torch.Tensor):
            if name.endswith("rotary_pos_emb.inv_freq"):
                return
            if ".query_key_value." in name:  # rows: all q heads, then the k groups, then the v groups
                for shard, part in zip("qkv", tensor.split([q_size, kv_size, kv_size])):
                    yield name, part, shard
            elif ".dense_h_to_4h." in name:  # rows: the silu half, then the linear half
                for shard, part in enumerate(tensor.chunk(2, dim=0)):
                    yield name, part, shard
            else:
                yield name, tensor, None

        return load_mapped(self, weights, mapper)
