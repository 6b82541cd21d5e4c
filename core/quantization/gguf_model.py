"""Load a GGUF file into a native model with its linear layers, embeddings and LM head kept quantized.

The model is built as usual; before loading, each linear layer's method becomes a
``GGUFLinearMethod`` and the embedding (and LM head) weights become placeholders that keep the GGUF
tensors they receive. The family's own name tables route the tensors (``checkpoint_targets``), so
the dense and quantized paths load the same tensors into the same layers.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from pagedllm.loader.gguf_tensors import iterate_gguf_tensors
from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.layers.linear import LinearBase
from pagedllm.models.weight_utils import load_mapped
from pagedllm.quantization.gguf_linear import GGUFEmbedding, GGUFLinearMethod
from pagedllm.quantization.gguf_weight import GGUFWeight


def check_gguf_device(device: torch.device) -> None:
    if torch.device(device).type != "cpu":
        raise ValueError(f"quantization='gguf' has no {torch.device(device).type} kernels in this release (CPU only); "
                         "load the file with dequantize_gguf=True (--dequantize-gguf) to run it dense on this device")


def load_gguf_weights(model: nn.Module, gguf_file: str | os.PathLike, converted: str | os.PathLike, hf_config,
                      dtype: torch.dtype) -> None:
    """Load ``gguf_file`` into ``model`` keeping its quantized tensors in their blocks (``converted``: the
    file's cached conversion, for the tensor names)."""
    if not isinstance(model, CausalLM) or type(model).split_fused is not CausalLM.split_fused:
        raise ValueError(f"{type(model).__name__} cannot run GGUF weights quantized in this release (its loader "
                         "re-lays fused tensors); load the file with dequantize_gguf=True (--dequantize-gguf)")
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.linear_method = GGUFLinearMethod()
            module.linear_method.create_weights(module, module.input_size, module.output_size,
                                                getattr(module, "bias", None) is not None)
            module.linear_method.dtype = dtype  # F16/F32 parts are kept in the model's dtype
    embedding = model.get_submodule(model.embedding_name)
    head = model.get_submodule(model.head_name)
    received: dict[str, GGUFWeight] = {}
    for name, module in (("embedding", embedding), ("head", head)):
        if name == "head" and model.tied:
            head.weight = embedding.weight
            break
        module.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        module.weight.weight_loader = _keeper(received, name)
        module.weight.gguf_loader = True
    params = dict(model.named_parameters(remove_duplicate=False))

    def targets(name, tensor):
        for target, part, shard in model.checkpoint_targets(name, tensor):
            if isinstance(part, GGUFWeight) and not getattr(params.get(target), "gguf_loader", False):
                if part.quantized:
                    raise ValueError(f"GGUF tensor {part.name!r} ({part.type_name}) maps to {target!r}, which has no "
                                     "quantized method in this release; load the file with dequantize_gguf=True")
                part = part.data  # a float tensor for a plain parameter
            yield target, part, shard

    load_mapped(model, iterate_gguf_tensors(gguf_file, hf_config, converted), targets)
    embedded = received["embedding"]
    parent_name, _, child = model.embedding_name.rpartition(".")
    model.get_submodule(parent_name).add_module(child, GGUFEmbedding(embedded, dtype))
    head_weight = embedded if model.tied else received["head"]
    head_weight.check_kernel()  # the head is a matmul: its type needs a kernel, as every linear layer's
    head.linear_method = GGUFLinearMethod.of(head_weight, dtype)
    head.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
    for module in model.modules():
        if isinstance(module, LinearBase) or module is head:
            module.linear_method.process_weights_after_loading(module)


def _keeper(received: dict, key: str):
    def load(param, loaded, shard=None):
        received[key] = loaded if isinstance(loaded, GGUFWeight) else GGUFWeight.dense(loaded)
    return load


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage counted once (tied weights, shared blocks)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and storage.nbytes():
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def quantized_gguf(config, resolved, device: torch.device) -> str | None:
    """The GGUF file to load quantized, or None (dense): a GGUF model runs quantized unless
    ``dequantize_gguf``; ``quantization='gguf'`` on another checkpoint is a mismatch."""
    if resolved.gguf_file is None:
        if config.quantization == "gguf":
            raise ValueError(f"quantization='gguf' but model={config.model!r} is not a GGUF file (it resolved to "
                             f"{resolved.path}); leave quantization unset for this checkpoint")
        return None
    if config.dequantize_gguf:
        return None
    check_gguf_device(device)
    return resolved.gguf_file
