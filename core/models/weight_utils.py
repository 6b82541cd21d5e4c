"""Loading checkpoint tensors into a model whose parameters are named (and fused) differently.

Each family maps a checkpoint name to ``(parameter name, tensor, shard id)`` targets; this
module copies them through each parameter's ``weight_loader`` and checks nothing is missing.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from torch import nn

Target = tuple[str, torch.Tensor, object]


def load_mapped(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                mapper: Callable[[str, torch.Tensor], Iterator[Target]]) -> set[str]:
    """Copy every mapped checkpoint tensor; raise on unknown names and on parameters left unloaded.

    Parameters shared by tying (the LM head and the embeddings) count as loaded once either is.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for name, tensor in weights:
        for target, part, shard in mapper(name, tensor):
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no parameter {target!r} in {type(model).__name__}")
            param = params[target]
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                param.data.copy_(part)
            elif shard is None:
                loader(param, part)
            else:
                loader(param, part, shard)
            loaded.add(target)
    done = {id(params[n]) for n in loaded}
    missing = sorted(n for n, p in params.items() if id(p) not in done)
    if missing:
        raise ValueError(f"checkpoint is missing weights: {missing[:8]}")
    return loaded

