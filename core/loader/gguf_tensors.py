"""Stream a GGUF file's tensors under Hugging Face parameter names, quantized ones in their blocks.

The names come from gguf's tensor-name table applied to the names of the file's dense conversion
(what transformers' ``get_gguf_hf_weights_map`` does when it converts), so both paths load the same
tensors into the same parameters. Llama-style files
store q/k rows permuted for ggml's rotary layout; transformers un-permutes the float weights, and
since a permutation of rows moves whole rows of blocks, the same reshape applies to the blocks.
Architectures whose transformers processor does more than that (fusing, transposing, renaming)
are refused here; their files load with ``dequantize_gguf=True``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np
import torch

from pagedllm.loader.gguf_index import read_gguf_index
from pagedllm.loader.weights import checkpoint_names
from pagedllm.quantization.gguf_weight import FLOAT_TYPES, GGUFWeight

logger = logging.getLogger(__name__)


def iterate_gguf_tensors(gguf_file: str | os.PathLike, hf_config,
                         converted: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor | GGUFWeight]]:
    """``(hf_name, tensor)``: 1-D tensors as float32 tensors, 2-D ones as ``GGUFWeight`` (blocks or floats).

    ``converted``: the file's cached dense conversion (``loader.gguf.convert_gguf``), whose tensor names
    (read from the safetensors header, no data) are the HF names the dense path loads."""
    from gguf import GGMLQuantizationType, quants
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, LlamaTensorProcessor, TensorProcessor

    architecture, tensors = read_gguf_index(gguf_file)
    processor_cls = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if processor_cls not in (TensorProcessor, LlamaTensorProcessor):
        raise ValueError(f"GGUF architecture {architecture!r} needs tensor rewriting that the quantized path does not "
                         "do yet (quantized GGUF runs for architectures stored row for row, e.g. llama, mistral, "
                         "qwen2); load it with dequantize_gguf=True (--dequantize-gguf)")
    processor = processor_cls(config=hf_config.to_dict())
    mapping = _name_map(architecture, hf_config, checkpoint_names(converted))
    skipped = []
    for tensor in tensors:
        if tensor.name not in mapping:
            skipped.append(tensor.name)
            continue
        qtype, data = tensor.qtype, tensor.data  # uint8 [rows, row_bytes], a view of the file
        if qtype in FLOAT_TYPES:
            data = quants.dequantize(data, GGMLQuantizationType(qtype)).astype(np.float32)
        data = processor.process(weights=data, name=tensor.name).weights  # row permutation of q/k
        value = torch.from_numpy(np.array(data))  # a private copy: the file's mapping is closed after loading
        name = mapping[tensor.name]
        if len(tensor.shape) == 1:
            yield name, value.reshape(-1).float()
        elif qtype in FLOAT_TYPES:
            yield name, GGUFWeight(value, qtype, value.shape[0], value.shape[1], tensor.name)
        else:
            yield name, GGUFWeight(value, qtype, value.shape[0], tensor.shape[0], tensor.name)  # ggml: row length first
    if skipped:
        logger.info("GGUF tensors without a parameter, not loaded: %s", ", ".join(skipped))


def _name_map(architecture: str, hf_config, hf_names: list[str]) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, from gguf's tensor-name table for the file's architecture:
    what transformers' ``get_gguf_hf_weights_map`` computes for the names of the dense conversion
    (without building transformers' model class, whose import alone takes seconds and ~100 MB)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise ValueError(f"GGUF architecture {architecture!r} is unknown to the installed gguf package; load the file "
                         "with dequantize_gguf=True (--dequantize-gguf)")
    table = get_tensor_name_map(arch, hf_config.num_hidden_layers)
    mapping = {}
    for hf_name in hf_names:
        base, dot, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base) if suffix in ("weight", "bias") else None
        if gguf_name is not None:
            mapping[f"{gguf_name}.{suffix}"] = hf_name
    return mapping
