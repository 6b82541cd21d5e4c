"""Load a model with fp8 weights: a dense checkpoint quantized at load, or an fp8 checkpoint as stored.

Which layers run fp8 (as vLLM): the decoder's linear layers (q/k/v, o, gate/up, down and their fused
forms) and, quantized at load, MoE experts (``fp8_moe``). The embeddings, the LM head, norms and MoE
routers stay in the compute dtype. In an fp8 checkpoint the layers with a ``weight_scale`` are
the fp8 ones (layers its quantizer ignored load dense). The family's own name tables route the
tensors (``checkpoint_targets``), so the dense and fp8 paths load the same names into the same layers.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagedllm.loader.weights import iterate_weights, modules_with_tensor
from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.layers.linear import LinearBase
from pagedllm.models.weight_utils import load_mapped
from pagedllm.quantization.fp8_config import Fp8Config, quant_method, read_fp8_config
from pagedllm.quantization.fp8_linear import Fp8LinearMethod
from pagedllm.quantization.fp8_moe import Fp8MoEWeights

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
UNUSED_SCALES = (".input_scale", ".k_scale", ".v_scale", ".kv_scale", ".q_scale")  # activation/KV scales


def checkpoint_fp8(config, hf_config, resolved, device: torch.device) -> Fp8Config | None:
    """The fp8 config to load the checkpoint with, or None (not fp8).

    A checkpoint whose quantization_config says fp8 runs fp8 (``quantization`` None or 'fp8');
    ``quantization='fp8'`` on a dense checkpoint quantizes it at load (a GGUF file too with
    ``dequantize_gguf=True``: its dequantized float weights); on a GGUF file run as blocks, or a GPTQ or AWQ
    checkpoint, it is refused (they are quantized already)."""
    asked = config.quantization
    if resolved.gguf_file is not None and not (asked == "fp8" and config.dequantize_gguf):
        if asked == "fp8":
            raise ValueError(f"quantization='fp8' but model={config.model!r} is a GGUF file, quantized already; "
                             "leave quantization unset (or 'gguf') to run its blocks, add dequantize_gguf=True "
                             "(--dequantize-gguf) to requantize its dequantized weights to fp8, or load a "
                             "bf16/fp16/fp32 safetensors checkpoint")
        return None
    qc = getattr(hf_config, "quantization_config", None)
    method = quant_method(qc)
    if method == "fp8":
        if asked not in (None, "fp8"):
            return None  # checkpoint_w4a16 names the mismatch
        found = read_fp8_config(qc)
    elif asked == "fp8":
        if qc is not None:
            raise ValueError(f"quantization='fp8' but the checkpoint at {resolved.path} is quantized already "
                             f"(quantization_config quant_method={method!r}); leave quantization unset to run it "
                             "as it is, or load its bf16/fp16/fp32 original to quantize it to fp8")
        found = Fp8Config(serialized=False)
    else:
        return None
    if torch.device(device).type not in DEVICES:
        raise ValueError(f"quantization='fp8' has no {torch.device(device).type} kernels in this release; "
                         f"supported devices: {', '.join(DEVICES)}")
    return found


def fp8_layer_names(model: nn.Module, model_path: str | os.PathLike, config: Fp8Config) -> list[str]:
    """The linear layers that run fp8 (see the module docstring)."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"{type(model).__name__} cannot run fp8 weights in this release (it is not a native "
                         "decoder); supported: the native decoder families (llama, qwen2, mistral, gpt_neox, ...)")
    modules = dict(model.named_modules())
    if not config.serialized:
        names = []
        for name, module in modules.items():
            parent = modules.get(name.rpartition(".")[0]) if "." in name else model
            if isinstance(module, LinearBase) and not hasattr(parent, "experts"):  # not a MoE router
                names.append(name)
        if not names:
            raise ValueError(f"quantization='fp8': {type(model).__name__} has no linear layers to quantize")
        return names
    if type(model).split_fused is not CausalLM.split_fused:
        raise ValueError(f"{type(model).__name__} cannot load an fp8 checkpoint in this release (its loader re-lays "
                         "fused tensors, which per-tensor scales do not follow); supported: models whose "
                         "checkpoints store q/k/v and gate/up separately (llama, mistral, qwen2, ...), or "
                         "quantization='fp8' on the model's bf16/fp16/fp32 checkpoint")
    names = modules_with_tensor(model, model_path, ".weight_scale")
    if not names:
        raise ValueError("the checkpoint's quantization_config says fp8, but it has no '.weight_scale' tensors")
    for name in sorted(names):
        if not isinstance(modules.get(name), LinearBase):
            kind = type(modules[name]).__name__ if name in modules else "not a module"
            raise ValueError(f"the checkpoint stores {name!r} in fp8, which is {kind} here; only the decoder's "
                             "linear layers run fp8 in this release")
    return sorted(names)


def install_fp8_methods(model: nn.Module, names: list[str], config: Fp8Config) -> None:
    """Give each named linear layer an ``Fp8LinearMethod`` (its dense weight, never filled, is dropped)."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        module.linear_method = Fp8LinearMethod(config, name)
        module.linear_method.create_weights(module, module.input_size, module.output_size,
                                            getattr(module, "bias", None) is not None)


def load_fp8_weights(model: nn.Module, model_path: str | os.PathLike, config: Fp8Config) -> None:
    """Load the checkpoint with every fp8 layer quantized (or placed) as its rows arrive."""
    names = fp8_layer_names(model, model_path, config)
    install_fp8_methods(model, names, config)
    experts = {}
    if not config.serialized:  # MoE experts quantized at load too (an fp8 checkpoint's experts: see fp8_layer_names)
        experts = {n: Fp8MoEWeights.install(m, n) for n, m in model.named_modules() if hasattr(m, "w13_weight")}
    fp8 = set(names)
    skipped: set[str] = set()

    def targets(name, tensor):
        for target, part, shard in model.checkpoint_targets(name, tensor):
            module_name, _, leaf = target.rpartition(".")
            if config.serialized and target.endswith(UNUSED_SCALES):
                skipped.add("." + leaf)  # activations stay in the compute dtype (w8a16); KV scales: not read
                continue
            yield target, part, shard

    load_mapped(model, iterate_weights(model_path), targets)
    modules = dict(model.named_modules())
    for name in names:
        modules[name].linear_method.process_weights_after_loading(modules[name])
    for name, weights in experts.items():
        weights.finish(modules[name])
    if skipped:
        logger.info("fp8 checkpoint: %s tensors not used (activations stay in the compute dtype: w8a16)",
                    ", ".join(sorted(skipped)))
    logger.info("%d linear layers and the experts of %d MoE layers run %s", len(fp8), len(experts),
                config.describe())
