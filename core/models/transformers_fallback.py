"""Transformers fallback: run any Hugging Face ``*ForCausalLM`` over the paged KV cache.

The HF model computes everything except attention: a function registered with transformers'
``AttentionInterface`` hands each layer's q/k/v (after RoPE, before any GQA repeat) to one of
our ``Attention`` layers, which writes the paged cache and attends through the engine's backend.
The engine's flattened batch is passed as a single row with its own ``position_ids``; masks are
not built (``AttentionMaskInterface`` returns None) because the backend knows each sequence.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.models.layers.attention import Attention

ATTN_IMPL = "pagedllm"


def _paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, T, D], key/value [1, KVH, T, D] -> ([1, T, H, D], no weights)."""
    layer: Attention = module.paged_attn
    T = query.shape[2]
    flat = [t[0].transpose(0, 1).reshape(T, -1) for t in (query, key, value)]
    return layer(*flat).view(1, T, layer.num_heads, layer.head_dim), None


def _no_mask(*args, **kwargs):
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPL, _paged_attention)
    AttentionMaskInterface.register(ATTN_IMPL, _no_mask)


def check_supported(config) -> None:
    """Raise ValueError unless transformers can build ``config`` as a causal LM."""
    from transformers import AutoModelForCausalLM

    archs = list(getattr(config, "architectures", None) or [])
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in AutoModelForCausalLM._model_mapping:
        raise ValueError(f"model architecture(s) {archs} (model_type={getattr(config, 'model_type', None)!r}) have "
                         "no native implementation and transformers has no causal-LM class for them")


class TransformersForCausalLM(nn.Module):
    """A HF causal LM whose attention layers read and write the engine's paged KV cache."""

    def __init__(self, config, max_position: int | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM

        _register()
        self.config = config
        # Remote code: the config class itself came from it, so the user already passed trust_remote_code.
        remote = type(config).__module__.startswith("transformers_modules")
        self.hf = AutoModelForCausalLM.from_config(config, dtype=torch.get_default_dtype(),
                                                   attn_implementation=ATTN_IMPL, trust_remote_code=remote)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        for module in self.hf.modules():
            if hasattr(module, "layer_idx") and hasattr(module, "scaling") and hasattr(module, "head_dim"):
                module.paged_attn = Attention(heads, module.head_dim, module.scaling, kv_heads,
                                              sliding_window=getattr(module, "sliding_window", None),
                                              logits_soft_cap=getattr(module, "attn_logit_softcapping", None))
        if not any(isinstance(m, Attention) for m in self.modules()):
            raise ValueError(f"{type(self.hf).__name__}: no attention module exposes layer_idx/scaling/head_dim, "
                             "so its attention cannot be routed to the paged cache")
        self.final_soft_cap = getattr(config, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.hf.base_model(input_ids=input_ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
                                 use_cache=False)
        return out[0][0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.hf.get_output_embeddings()(hidden)
        if self.final_soft_cap:
            logits = torch.tanh(logits / self.final_soft_cap) * self.final_soft_cap
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        targets = dict(self.hf.named_parameters(remove_duplicate=False))
        targets.update(self.hf.state_dict(keep_vars=True))  # persistent buffers too
        loaded: set[str] = set()
        for name, tensor in weights:
            if name not in targets:
                if name.endswith("inv_freq"):
                    continue
                raise ValueError(f"checkpoint tensor {name!r} has no parameter in {type(self.hf).__name__}")
            targets[name].data.copy_(tensor)
            loaded.add(name)
        done = {id(targets[n]) for n in loaded}
        missing = sorted(n for n, p in self.hf.named_parameters(remove_duplicate=False) if id(p) not in done)
        if missing:
            raise ValueError(f"checkpoint is missing weights: {missing[:8]}")
        return loaded
