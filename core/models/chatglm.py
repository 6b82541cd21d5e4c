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

from typing import Iterator

import torch
from torch import nn

from pagedllm.models.causal_lm import CausalLM, stacked_shards
from pagedllm.models.layers.layernorm import LayerNorm, RMSNorm
from pagedllm.models.layers.mlp import GatedMLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.models.layers.rotary_embedding import get_rope
from pagedllm.models.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.weight_utils import Target


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


def glm_heads(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size): GQA over ``multi_query_group_num`` groups."""
    heads = config.num_attention_heads
    kv_heads = config.multi_query_group_num if getattr(config, "multi_query_attention", False) else heads
    return heads, kv_heads, getattr(config, "kv_channels", None) or config.hidden_size // heads


def glm_attention(config, max_position: int) -> QKVAttention:
    """GPT-J-style rotary on half of each head, base scaled by ``rope_ratio``."""
    heads, kv_heads, dim = glm_heads(config)
    linear_bias = bool(getattr(config, "add_bias_linear", False))
    base = 10000.0 * float(getattr(config, "rope_ratio", 1) or 1)
    rotary = get_rope(dim, dim // 2, max_position, {"rope_type": "default", "rope_theta": base}, is_neox_style=False)
    return QKVAttention(config.hidden_size, heads, kv_heads, dim, rotary_emb=rotary, o_bias=linear_bias,
                        qkv_bias=linear_bias or bool(getattr(config, "add_qkv_bias", False)))


class GLMBlock(nn.Module):
    def __init__(self, config, max_position: int):
        super().__init__()
        self.residual_from_norm = bool(getattr(config, "apply_residual_connection_post_layernorm", False))
        self.input_layernorm = _norm(config)
        self.self_attention = glm_attention(config, max_position)
        self.post_attention_layernorm = _norm(config)
        self.mlp = GatedMLP(config.hidden_size, config.ffn_hidden_size, bias=bool(getattr(config, "add_bias_linear", False)))

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


class ChatGLMForCausalLM(CausalLM):
    """Registered as ``ChatGLMModel`` and ``ChatGLMForConditionalGeneration`` (the published names)."""

    body_name = "transformer"
    embedding_name = "transformer.embedding.word_embeddings"
    head_name = "transformer.output_layer"
    skipped_suffixes = ("rotary_pos_emb.inv_freq",)
    renames = ((".self_attention.query_key_value.", ".self_attention.qkv_proj."),
               (".self_attention.dense.", ".self_attention.o_proj."),
               (".mlp.dense_h_to_4h.", ".mlp.gate_up_proj."), (".mlp.dense_4h_to_h.", ".mlp.down_proj."))

    def __init__(self, config, max_position: int | None = None):
        check_supported(config)
        super().__init__(config, max_position)

    @staticmethod
    def default_max_position(config) -> int:
        return getattr(config, "seq_length", None) or 2048

    def build_body(self, config, max_position: int) -> nn.Module:
        return ChatGLMModel(config, max_position)

    def ties_embeddings(self, config) -> bool:
        return False

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        if ".qkv_proj." in name:  # rows: all q heads, then the k groups, then the v groups
            heads, kv_heads, dim = glm_heads(self.config)
            q_size, kv_size = heads * dim, kv_heads * dim
            yield from stacked_shards(name, tensor, [q_size, kv_size, kv_size], "qkv")
        elif ".gate_up_proj." in name:  # rows: the silu half, then the linear half
            yield from stacked_shards(name, tensor, [tensor.shape[0] // 2] * 2, (0, 1))
        else:
            yield name, tensor, None
