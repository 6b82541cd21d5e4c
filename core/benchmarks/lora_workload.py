"""Random PEFT LoRA adapters for a model, written as PEFT folders, for ``bench throughput --lora N``.

The adapted modules and their shapes come from the model's own Hugging Face class built on the meta
device (no weights are loaded), so any architecture with the usual projection names works.
"""
from __future__ import annotations

import json
import os

import torch

LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapters(model_path: str, count: int, rank: int, out_dir: str, seed: int = 0,
                          targets=LLAMA_STYLE_TARGETS, std: float = 0.02) -> list[str]:
    """``count`` adapter folders of ``rank`` over ``targets`` (PEFT's file layout); their paths."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [(name, m) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not linears:
        raise ValueError(f"{model_path}: no module named {', '.join(targets)} to adapt")
    paths = []
    for i in range(count):
        gen = torch.Generator().manual_seed(seed + i)
        tensors = {}
        for name, m in linears:
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=gen) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=gen) * std
        folder = os.path.join(out_dir, f"lora-{i}")
        os.makedirs(folder, exist_ok=True)
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
                       "bias": "none", "base_model_name_or_path": model_path}, f)
        paths.append(folder)
    return paths
