"""Reading a PEFT LoRA folder and checking it against the served model.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``) with one
``lora_A`` [r, in] and ``lora_B`` [out, r] per adapted module, named after the Hugging Face module
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``). The model's own checkpoint
tables (``CausalLM.checkpoint_targets``: renames, packed modules, fused splits) map each module
onto a native layer and the rows of that layer's output it feeds, so a q_proj adapter lands in the
q slice of ``qkv_proj`` and a GPT-NeoX ``query_key_value`` adapter's B rows are re-laid like the
checkpoint's. Every refusal is a ValueError naming the adapter.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch

from pagedllm.lora.request import LoRARequest

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


@dataclass
class LoRAModule:
    """One adapted Hugging Face module: ``delta(x) = scaling * x @ a.T @ b.T``."""

    a: torch.Tensor  # [rank, in]
    b: torch.Tensor  # [out, rank]
    scaling: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass
class PeftAdapter:
    request: LoRARequest
    config: dict
    modules: dict[str, LoRAModule]  # Hugging Face module name -> weights

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules.values())


def _error(request: LoRARequest, message: str) -> ValueError:
    return ValueError(f"LoRA adapter {request.lora_name!r} ({request.lora_path}): {message}")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup (``peft.utils.other.get_pattern_key``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_peft_adapter(request: LoRARequest, max_lora_rank: int) -> PeftAdapter:
    """Read and check a PEFT folder on its own terms (files, LoRA type, rank, features we do not run)."""
    path = os.path.expanduser(request.lora_path)
    if not os.path.isdir(path):
        raise _error(request, "no such folder (lora_path must be a local PEFT adapter folder)")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise _error(request, f"{CONFIG_FILE} is missing; is this a PEFT adapter folder?")
    with open(config_path) as f:
        config = json.load(f)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _error(request, f"peft_type={peft_type!r}; only LORA adapters are supported")
    unsupported = {"use_dora": "DoRA", "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D) adapters",
                   "modules_to_save": "modules_to_save (fully trained extra modules)",
                   "trainable_token_indices": "trainable tokens", "lora_bias": "LoRA biases"}
    for key, what in unsupported.items():
        if config.get(key):
            raise _error(request, f"{what} are not supported ({key}={config[key]!r})")
    if config.get("bias", "none") != "none":
        raise _error(request, f"bias={config['bias']!r} trains the base layers' biases; only bias='none' is supported")
    tensors = _read_tensors(request, path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise _error(request, f"tensor {key!r} is not a LoRA A/B weight (embeddings, heads and other trained "
                                  "modules are not supported)")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    if not pairs:
        raise _error(request, "the adapter holds no LoRA weights")
    rslora = bool(config.get("use_rslora", False))
    modules = {}
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise _error(request, f"module {name!r} has lora_{'A' if 'A' in ab else 'B'} but not its partner")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise _error(request, f"module {name!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not "
                                  "a [r, in] / [out, r] pair")
        rank = a.shape[0]
        if rank > max_lora_rank:
            raise _error(request, f"rank {rank} (module {name!r}) exceeds max_lora_rank={max_lora_rank}; start the "
                                  f"engine with max_lora_rank >= {rank}")
        alpha = float(_pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", 8)))
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[name] = LoRAModule(a.float(), b.float(), scaling)
    return PeftAdapter(request, config, modules)


def _read_tensors(request: LoRARequest, path: str) -> dict[str, torch.Tensor]:
    for filename in WEIGHT_FILES:
        file = os.path.join(path, filename)
        if not os.path.isfile(file):
            continue
        if filename.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    raise _error(request, f"no weights: expected {' or '.join(WEIGHT_FILES)}")


@dataclass
class LayerPiece:
    """One adapted module's share of a native layer: its A, and the output rows its B feeds."""

    a: torch.Tensor  # [rank, in]
    b_rows: list[tuple[int, torch.Tensor]]  # (first output row, B rows [n, rank] already scaled)


def map_to_layers(adapter: PeftAdapter, model, layers: dict) -> dict[str, list[LayerPiece]]:
    """Place each adapted module on the model's LoRA layers (``layers``: name -> LoRALinearMethod)."""
    request = adapter.request
    placed: dict[str, list[LayerPiece]] = {}
    missing = []
    for module, weights in adapter.modules.items():
        targets = list(model.checkpoint_targets(module + ".weight", weights.b))
        names = {t[0].removesuffix(".weight") for t in targets}
        if len(names) != 1 or next(iter(names)) not in layers:
            missing.append(module)
            continue
        layer_name = next(iter(names))
        lora = layers[layer_name]
        if weights.a.shape[1] != lora.input_size:
            raise _error(request, f"module {module!r} expects input size {weights.a.shape[1]} but the model's "
                                  f"{layer_name} has {lora.input_size}: the adapter was trained for another base "
                                  "model (hidden size mismatch)")
        rows = []
        for _, b_part, shard in targets:
            offset, size = lora.shard_rows(shard)
            if b_part.shape[0] != size:
                raise _error(request, f"module {module!r} has {b_part.shape[0]} output rows but the model's "
                                      f"{layer_name} ({shard or 'all'}) has {size}: the adapter was trained for "
                                      "another base model (layer size mismatch)")
            rows.append((offset, b_part * weights.scaling))
        placed.setdefault(layer_name, []).append(LayerPiece(weights.a, rows))
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in layers})
        raise _error(request, f"targets module(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} that "
                              f"this {type(model).__name__} does not have as a LoRA-capable layer (its adaptable "
                              f"projections: {', '.join(known)}; target_modules="
                              f"{adapter.config.get('target_modules')!r})")
    for layer_name, pieces in placed.items():
        if sum(p.a.shape[0] for p in pieces) > layers[layer_name].max_columns:
            raise _error(request, f"{layer_name} gets {len(pieces)} adapted modules, more than its "
                                  f"{layers[layer_name].num_shards} parts")
    return placed
