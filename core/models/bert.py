"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa, jina-bert-v2) as pooling models: embeddings in,
hidden states out.

No LM head and no KV cache: the pooling runner packs whole inputs into one step and pools the
hidden states (``pagedllm.pooling``). Post-norm blocks: ``norm(x + attention(x))`` then
``norm(x + mlp(x))``. RoBERTa and XLM-R differ only in their positions, which start after the
padding index; jina-bert-v2 has no position table (symmetric ALiBi in the attention) and a gated
MLP (``act(gate) * up``, then ``wo``).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from pagedllm.models.layers.activation import ActAndMul
from pagedllm.models.layers.attention import local_alibi_slopes
from pagedllm.models.layers.encoder_attention import EncoderAttention
from pagedllm.models.layers.layernorm import LayerNorm
from pagedllm.models.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.models.layers.mlp import MLP
from pagedllm.models.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.causal_lm import stacked_shards
from pagedllm.models.weight_utils import Target, load_mapped

# checkpoint fragment -> ours, in order (attention.output.* before the block's output.*)
_RENAMES = ((".attention.output.dense.", ".attention.o_proj."),
            (".attention.output.LayerNorm.", ".attention_norm."),
            (".intermediate.dense.", ".mlp.fc_in."),
            (".output.dense.", ".mlp.fc_out."),
            (".output.LayerNorm.", ".output_norm."),
            ("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"),
            ("_norm.gamma", "_norm.weight"), ("_norm.beta", "_norm.bias"),
            (".mlp.layernorm.", ".output_norm."))  # jina-bert-v2's MLP keeps its norm
_QKV = {".attention.self.query.": "q", ".attention.self.key.": "k", ".attention.self.value.": "v"}
_HEADS = ("pooler.", "cls.", "lm_head.", "classifier.")  # task heads and BERT's tanh pooler: not used


class BertEmbeddings(nn.Module):
    def __init__(self, config, position_offset: int):
        super().__init__()
        self.position_offset = position_offset
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.absolute = getattr(config, "position_embedding_type", "absolute") != "alibi"
        if self.absolute:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(config.type_vocab_size, 1), config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        words = self.word_embeddings(input_ids)
        token_type = self.token_type_embeddings.weight[0]  # one segment: type 0 everywhere
        if not self.absolute:
            return self.LayerNorm.add_and_norm(words, token_type)[0]
        return self.LayerNorm.add_and_norm(words, token_type, self.position_embeddings(positions + self.position_offset))[0]


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        self.attention = nn.Module()
        self.attention.qkv_proj = QKVParallelLinear(hidden, head_dim, heads, heads, bias=True)
        self.attention.o_proj = RowParallelLinear(hidden, hidden, bias=True)
        local_heads = self.attention.qkv_proj.num_heads
        alibi = getattr(config, "position_embedding_type", "absolute") == "alibi"
        self.attn = EncoderAttention(local_heads, head_dim, head_dim ** -0.5,
                                     local_alibi_slopes(heads, local_heads) if alibi else None)
        self.size = local_heads * head_dim
        self.attention_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        if getattr(config, "feed_forward_type", None) in ("glu", "geglu", "reglu"):
            self.mlp = GluMLP(hidden, config.intermediate_size, config.feed_forward_type, config.hidden_act)
        else:
            self.mlp = MLP(hidden, config.intermediate_size, config.hidden_act, bias=True)
        self.output_norm = LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attention.qkv_proj(x).split(self.size, dim=-1)
        x = self.attention_norm.add_and_norm(self.attention.o_proj(self.attn(q, k, v)), x)[0]
        return self.output_norm.add_and_norm(self.mlp(x), x)[0]


class GluMLP(nn.Module):
    """jina-bert-v2's MLP: ``wo(act(gate) * up)`` on one bias-free ``gated_layers`` [gate | up]
    projection; ``geglu`` gates with GELU, ``reglu`` with ReLU, ``glu`` with the config's activation."""

    def __init__(self, hidden_size: int, intermediate_size: int, kind: str, hidden_act: str):
        super().__init__()
        self.gated_layers = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=False)
        self.act = ActAndMul({"geglu": "gelu", "reglu": "relu"}.get(kind, hidden_act))
        self.wo = RowParallelLinear(intermediate_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.act(self.gated_layers(x)))


class BertModel(nn.Module):
    is_pooling_model = True  # the runner pools its hidden states; it cannot generate
    default_pooling_type = "CLS"  # vLLM's default for BERT; a sentence-transformers folder says MEAN

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config, self.position_offset(config))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    @staticmethod
    def position_offset(config) -> int:
        """Where position 0 of an input sits in the position table."""
        return 0

    @classmethod
    def position_limit(cls, config) -> int:
        """The longest input the position table allows (RoBERTa's first positions are taken)."""
        return config.max_position_embeddings - cls.position_offset(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids, positions)
        for layer in self.encoder.layer:
            x = layer(x)
        return x

    def checkpoint_targets(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        for prefix in ("bert.", "roberta.", "model."):
            name = name.removeprefix(prefix)
        if name.startswith(_HEADS) or name.endswith(("position_ids", "token_type_ids")):
            return
        name = "." + name
        for old, new in _RENAMES:
            name = name.replace(old, new)
        for fragment, shard in _QKV.items():
            if fragment in name:
                yield name.replace(fragment, ".attention.qkv_proj.")[1:], tensor, shard
                return
        if ".mlp.gated_layers." in name:  # checkpoint-fused [gate | up]: our two shards
            yield from stacked_shards(name[1:], tensor, [tensor.shape[0] // 2] * 2, (0, 1))
            return
        yield name[1:], tensor, None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_mapped(self, weights, self.checkpoint_targets)


class RobertaModel(BertModel):
    """RoBERTa / XLM-RoBERTa: BERT whose positions count from ``pad_token_id + 1`` (HF's
    ``create_position_ids_from_input_ids`` on an unpadded input)."""

    @staticmethod
    def position_offset(config) -> int:
        return config.pad_token_id + 1


class JinaBertModel(BertModel):
    """jina-bert-v2 (jina-embeddings-v2): ALiBi and a gated MLP, read from its config
    (``position_embedding_type="alibi"``, ``feed_forward_type``); mean-pooled, as its model card embeds."""

    default_pooling_type = "MEAN"

    @classmethod
    def position_limit(cls, config) -> int:
        """ALiBi has no position table: the trained length (``max_position_embeddings``) is the limit."""
        return config.max_position_embeddings
