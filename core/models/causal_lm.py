"""What every native decoder-only model shares: a body, an LM head tied or not to the embeddings,
``compute_logits``, and one checkpoint loader driven by per-family tables.

A family says how its checkpoint names map onto its parameters instead of writing a loading
loop: ``skipped_suffixes`` (buffers that are not weights), ``renames`` (checkpoint fragment ->
parameter fragment, applied in order), ``packed_modules_mapping`` (a separate q/k/v or gate/up
tensor -> its shard of a fused parameter), and ``split_fused`` for checkpoints that store a
fused tensor in their own row layout. ``weight_utils.load_mapped`` copies the result through each
parameter's ``weight_loader`` (tensor-parallel slicing, later quantized layouts).

Pipeline parallelism (``models/pipeline.py``): a family whose body builds only its stage's parts
sets ``supports_pp``; the LM head exists on the last stage only, a tied head there loads the
embedding's tensor, and checkpoint tensors of the other stages' modules are skipped.
"""
from __future__ import annotations

from typing import ClassVar, Iterable, Iterator

import torch
from torch import nn

from pagedllm.models.layers.vocab_embedding import ParallelLMHead
from pagedllm.models.pipeline import PPMissingLayer, on_last_stage
from pagedllm.models.weight_utils import Target, load_mapped

# Separate checkpoint projections -> their shard of our fused parameter.
QKV_SHARDS = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
GATE_UP_SHARDS = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def stacked_shards(name: str, tensor: torch.Tensor, sizes: list[int], shards) -> Iterator[Target]:
    """A checkpoint-fused tensor whose rows are its shards one after another (q|k|v, gate|up)."""
    yield from ((name, part, s) for s, part in zip(shards, tensor.split(sizes)))


def per_head_qkv(tensor: torch.Tensor, heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """The q, k, v row blocks of a fused tensor laid out [head, (q|k|v), head_dim] (GPT-NeoX, Falcon MHA)."""
    rest = tensor.shape[1:]
    t = tensor.view(heads, 3, head_dim, *rest)
    return tuple(t[:, i].reshape(heads * head_dim, *rest) for i in range(3))


class CausalLM(nn.Module):
    body_name: ClassVar[str] = "model"  # the attribute holding the decoder: (input_ids, positions) -> hidden
    embedding_name: ClassVar[str] = "model.embed_tokens"
    head_name: ClassVar[str] = "lm_head"
    head_bias: ClassVar[bool] = False
    tie_by_default: ClassVar[bool] = False  # when the config does not say ``tie_word_embeddings``
    skipped_suffixes: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)
    renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    packed_modules_mapping: ClassVar[dict[str, tuple[str, object]]] = {}
    # the body builds only its pipeline stage's parts (``models/pipeline.py``), takes the previous
    # stage's tensors as ``intermediate`` and returns a tuple of them on every stage but the last
    supports_pp: ClassVar[bool] = False

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        self.config = config
        self.add_module(self.body_name, self.build_body(config, max_position or self.default_max_position(config)))
        if "." not in self.head_name:
            self.add_module(self.head_name, on_last_stage(lambda: self.build_head(config)) if self.supports_pp
                            else self.build_head(config))
        self.tied = self.ties_embeddings(config)
        head, embedding = self.get_submodule(self.head_name), self.get_submodule(self.embedding_name)
        # a last stage without the embedding loads the tied head from the embedding's tensor
        self.head_from_embedding = self.tied and isinstance(embedding, PPMissingLayer) and \
            not isinstance(head, PPMissingLayer)
        if self.tied and not isinstance(head, PPMissingLayer) and not isinstance(embedding, PPMissingLayer):
            head.weight = embedding.weight
        self.other_stages = tuple(name + "." for name, m in self.named_modules() if isinstance(m, PPMissingLayer))

    # --- what a family provides -------------------------------------------------------------
    def build_body(self, config, max_position: int) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def default_max_position(config) -> int:
        return getattr(config, "max_position_embeddings", None) or 4096

    def build_head(self, config) -> nn.Module:
        return ParallelLMHead(config.vocab_size, config.hidden_size, bias=self.head_bias)

    def ties_embeddings(self, config) -> bool:
        return bool(getattr(config, "tie_word_embeddings", self.tie_by_default))

    def split_fused(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        """Targets of one (renamed) checkpoint tensor; by default the packed-modules table."""
        for fragment, (fused, shard) in self.packed_modules_mapping.items():
            if f".{fragment}." in name:
                yield name.replace(f".{fragment}.", f".{fused}."), tensor, shard
                return
        yield name, tensor, None

    # --- shared ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate=None):
        """The final hidden state; on a pipeline stage before the last, the tensors the next one continues
        from (the stages after the first take them as ``intermediate`` instead of embedding ``input_ids``)."""
        body = getattr(self, self.body_name)
        return body(input_ids, positions) if intermediate is None else body(input_ids, positions, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.get_submodule(self.head_name).compute_logits(hidden)

    def checkpoint_targets(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
        """Skip buffers and the tied head, rename, then split into the fused parameters' shards."""
        if name.endswith(self.skipped_suffixes):
            return
        for old, new in self.renames:
            name = name.replace(old, new)
        if self.tied and name.startswith(self.head_name + "."):
            return
        if self.head_from_embedding and name.startswith(self.embedding_name + "."):
            name = self.head_name + name[len(self.embedding_name):]
        for target in self.split_fused(name, tensor):
            if not target[0].startswith(self.other_stages):  # another pipeline stage's weight
                yield target

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (HF names) into the parameters; returns the names loaded."""
        return load_mapped(self, weights, self.checkpoint_targets)


def headless(cls: type[CausalLM]) -> type[CausalLM]:
    """The decoder of ``cls`` saved without its LM head (``Qwen2Model``, ``Qwen3Model``: embedding models
    such as gte-Qwen2 and Qwen3-Embedding): a pooling model, LAST-token pooled by default. Its tensors
    lack the body prefix (``layers.0...``, not ``model.layers.0...``) and the head; the head is tied to
    the embeddings so nothing is left unloaded (the pooling runner never computes logits)."""

    class Headless(cls):
        is_pooling_model = True
        default_pooling_type = "LAST"

        def ties_embeddings(self, config) -> bool:
            return True

        def checkpoint_targets(self, name: str, tensor: torch.Tensor) -> Iterator[Target]:
            if not name.startswith(self.body_name + "."):
                name = f"{self.body_name}.{name}"
            yield from super().checkpoint_targets(name, tensor)

    Headless.__name__ = Headless.__qualname__ = cls.__name__.replace("ForCausalLM", "Model")
    return Headless
