"""Load a GPTQ or AWQ checkpoint into a native model with its quantized linear layers kept packed.

Which layers are quantized is read from the checkpoint's tensor names (a layer with a ``qweight``),
so layers the quantizer left dense (AWQ's ``modules_to_not_convert``, the LM head, embeddings)
load dense as usual. The family's own name tables route the tensors (``checkpoint_targets``), so the
quantized and dense paths load the same checkpoint names into the same layers.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from pagedllm.loader.weights import iterate_weights, modules_with_tensor
from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.layers.linear import LinearBase
from pagedllm.models.weight_utils import load_mapped
from pagedllm.quantization.fp8_config import quant_method
from pagedllm.quantization.w4a16_config import W4A16Config, read_w4a16_config
from pagedllm.quantization.w4a16_linear import W4A16LinearMethod

def checkpoint_w4a16(config, hf_config, resolved, device: torch.device) -> W4A16Config | None:
    """The GPTQ/AWQ config to load the checkpoint with, or None (dense, or a GGUF file).

    ``quantization=None`` follows the checkpoint; ``'gptq'``/``'awq'`` must match it."""
    asked = config.quantization
    if resolved.gguf_file is not None:
        if asked in ("gptq", "awq"):
            raise ValueError(f"quantization={asked!r} but model={config.model!r} is a GGUF file; leave quantization "
                             "unset (or 'gguf') for it")
        return None
    qc = getattr(hf_config, "quantization_config", None)
    fp8 = quant_method(qc) == "fp8"  # run by the fp8 path (fp8_model.checkpoint_fp8)
    found = None if fp8 else read_w4a16_config(qc)
    if asked in ("gptq", "awq") and (found is None or found.method != asked):
        has = "no quantization_config" if found is None else f"quantization_config quant_method={found.method!r}"
        has = "quantization_config quant_method='fp8'" if fp8 else has
        raise ValueError(f"quantization={asked!r} but the checkpoint at {resolved.path} has {has}; leave "
                         "quantization unset to follow the checkpoint")
    if found is not None and torch.device(device).type != "cpu":
        raise ValueError(f"quantization={found.method!r} has no {torch.device(device).type} kernels in this release "
                         "(CPU only: device='cpu')")
    return found


def load_w4a16_weights(model: nn.Module, model_path: str | os.PathLike, config: W4A16Config) -> None:
    """Give every linear layer with a ``qweight`` in the checkpoint a ``W4A16LinearMethod`` and load."""
    if not isinstance(model, CausalLM) or type(model).split_fused is not CausalLM.split_fused:
        native = isinstance(model, CausalLM)
        why = "its loader re-lays fused tensors, which packed int32 tensors do not allow" if native else (
            "it is not a native decoder")
        raise ValueError(f"{type(model).__name__} cannot run {config.method} weights in this release ({why}); "
                         "supported: native Llama-family models whose checkpoints store q/k/v and gate/up "
                         "separately (llama, mistral, qwen2, ...)")
    quantized = modules_with_tensor(model, model_path, ".qweight")
    if not quantized:
        raise ValueError(f"the checkpoint's quantization_config says {config.describe()}, but it has no "
                         "'.qweight' tensors")
    modules = dict(model.named_modules())
    for name in sorted(quantized):
        module = modules.get(name)
        if not isinstance(module, LinearBase):
            raise ValueError(f"the checkpoint quantizes {name!r} ({config.method}), which is "
                             f"{type(module).__name__ if module is not None else 'not a module'} here; only the "
                             "decoder's linear layers run quantized in this release")
        has_bias = getattr(module, "bias", None) is not None
        module.linear_method = W4A16LinearMethod(config, name)
        module.linear_method.create_weights(module, module.input_size, module.output_size, has_bias)
    params = dict(model.named_parameters(remove_duplicate=False))

    def targets(name, tensor):
        for target, part, shard in model.checkpoint_targets(name, tensor):
            module_name, _, leaf = target.rpartition(".")
            if module_name in quantized and leaf == "g_idx":
                modules[module_name].linear_method.keep(modules[module_name], "g_idx", part, shard)
                continue
            if module_name in quantized and leaf == "bias" and target not in params:
                if torch.count_nonzero(part):  # a real bias the model has no place for
                    raise ValueError(f"checkpoint tensor {name!r} is a non-zero bias, but {type(model).__name__}'s "
                                     f"{module_name} has no bias")
                continue  # AutoGPTQ (before 0.5) writes a zero bias for every quantized layer, as vLLM skips it
            yield target, part, shard

    load_mapped(model, iterate_weights(model_path), targets)
    for name in sorted(quantized):
        modules[name].linear_method.process_weights_after_loading(modules[name])
