"""Pipeline stages of a decoder (vLLM's ``get_pp_indices``, ``make_layers``, ``PPMissingLayer``).

A stage builds only its own layers: the others are ``PPMissingLayer`` placeholders with no weights,
so a checkpoint tensor of another stage's layer has no parameter here and is skipped when loading
(``CausalLM.checkpoint_targets``). The embedding lives on the first stage, the final norm and the LM
head on the last; a stage's body returns the tensors the next stage continues from (the hidden
state and, where the family carries one, the residual stream) as a tuple, and the last stage's body
the final hidden state.

Split as vLLM splits: ``num_layers // stages`` each, the remainder one layer each to the stages
before the last, from the second-to-last backwards (the first stage holds the embedding, the last
the norm and LM head); ``VLLM_PP_LAYER_PARTITION="a,b,..."`` sets the counts instead.
"""
from __future__ import annotations

import os

from torch import nn

from pagedllm.distributed import get_pp_rank, get_pp_world_size

PARTITION_ENV = "VLLM_PP_LAYER_PARTITION"


class PPMissingLayer(nn.Identity):
    """Stands where another stage's module is: no weights, never called."""


def num_layers_of(config) -> int:
    cfg = getattr(config, "text_config", None) or config
    return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None) or getattr(cfg, "n_layer")


def partition(num_layers: int, stages: int) -> list[int]:
    """Layers per stage: ``VLLM_PP_LAYER_PARTITION`` when set, else vLLM's even split (one stage: all;
    the variable is ignored, so a one-rank baseline runs beside a pipelined engine in one environment)."""
    if stages == 1:
        return [num_layers]
    given = os.environ.get(PARTITION_ENV)
    if given:
        try:
            parts = [int(p) for p in given.split(",")]
        except ValueError:
            raise ValueError(f"{PARTITION_ENV}={given!r}: expected comma-separated layer counts") from None
        if len(parts) != stages or sum(parts) != num_layers or min(parts) < 1:
            raise ValueError(f"{PARTITION_ENV}={given!r} must list {stages} positive layer counts summing to the "
                             f"model's {num_layers} layers (pipeline_parallel_size={stages})")
        return parts
    if num_layers < stages:
        raise ValueError(f"pipeline_parallel_size={stages} is larger than the model's {num_layers} layers: every "
                         f"stage needs at least one; use pipeline_parallel_size <= {num_layers}")
    parts = [num_layers // stages] * stages
    for i in range(2, num_layers % stages + 2):
        parts[-i] += 1
    return parts


def get_pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """The [start, end) layer range of stage ``pp_rank``."""
    parts = partition(num_layers, pp_size)
    start = sum(parts[:pp_rank])
    return start, start + parts[pp_rank]


def make_layers(num_layers: int, build) -> tuple[int, int, nn.ModuleList]:
    """This stage's layers built by ``build(i)``, the others ``PPMissingLayer``; plus its range."""
    start, end = get_pp_indices(num_layers, get_pp_rank(), get_pp_world_size())
    layers = nn.ModuleList(build(i) if start <= i < end else PPMissingLayer() for i in range(num_layers))
    return start, end, layers


def is_first_stage() -> bool:
    return get_pp_rank() == 0


def is_last_stage() -> bool:
    return get_pp_rank() == get_pp_world_size() - 1


def on_first_stage(build) -> nn.Module:
    """``build()`` on the first stage (embeddings), a placeholder elsewhere."""
    return build() if is_first_stage() else PPMissingLayer()


def on_last_stage(build) -> nn.Module:
    """``build()`` on the last stage (final norm, LM head), a placeholder elsewhere."""
    return build() if is_last_stage() else PPMissingLayer()
