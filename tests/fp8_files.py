"""fp8 checkpoints for tests, in the layout vLLM and Hugging Face read (a uniquely named module, as
``model_fixtures``): config.json ``quantization_config: {"quant_method": "fp8", "activation_scheme": ...}``;
each decoder linear ``weight`` in float8_e4m3fn with a float32 ``weight_scale`` (a scalar per tensor, or
[out, 1] per output channel) and, for the static scheme, a scalar ``input_scale``.

Like vLLM it quantizes the decoder's linear layers only (2-D ``.layers.N.`` weights that are not norms;
not embeddings or the LM head), with ``scale = amax / 448`` and the weight divided by it, clamped and
rounded to e4m3. Each call also writes the same weights dequantized to a dense float32 checkpoint,
computed from the stored bytes through the spec table (``fp8_reference``): the oracle for the fp8 path's
tokens, whether it reads the fp8 checkpoint or quantizes the source itself at load.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fp8_reference import reference_weight

LINEAR = re.compile(r"\.layers\.\d+\.(?!.*norm).*\.weight$")
FP8_MAX = 448.0


def quantize(weight: torch.Tensor, per: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes float8_e4m3fn, scale): ``per='channel'`` one scale a row ([out, 1]), ``'tensor'`` one scalar."""
    w = weight.to(torch.float32)
    amax = w.abs().amax(dim=1, keepdim=True) if per == "channel" else w.abs().max()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def source_tensors(source) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(Path(source).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def write_fp8(source, fp8_dir, dense_dir, per: str = "channel", activation_scheme: str = "dynamic",
              extra_config: dict | None = None, keep_dense: str | None = None) -> tuple[str | None, str]:
    """Write ``source``'s decoder linear layers in fp8 to ``fp8_dir`` (skipped when None) and their dequantized
    float32 twin to ``dense_dir``; returns both folders. ``keep_dense``: a pattern of weights left as they are
    (vLLM's fp8 leaves MoE routers in float, and this release the experts too)."""
    fp8, dense = {}, {}
    for name, tensor in source_tensors(source).items():
        if LINEAR.search(name) and tensor.dim() == 2 and not (keep_dense and re.search(keep_dense, name)):
            codes, scale = quantize(tensor, per)
            row_scales = scale.reshape(-1).expand(tensor.shape[0]).contiguous()
            dense[name] = torch.from_numpy(reference_weight(codes, row_scales)).to(torch.float32)
            prefix = name.removesuffix(".weight")
            fp8[name] = codes
            fp8[f"{prefix}.weight_scale"] = scale if per == "channel" else scale.reshape(())
            if activation_scheme == "static":
                fp8[f"{prefix}.input_scale"] = torch.tensor(0.05)
        else:
            fp8[name] = dense[name] = tensor
    folders = ((dense_dir, dense, False),) + (((fp8_dir, fp8, True),) if fp8_dir is not None else ())
    for folder, tensors, quant in folders:
        folder = Path(folder)
        shutil.copytree(source, folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        config.pop("quantization_config", None)
        if quant:
            config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": activation_scheme,
                                              **(extra_config or {})}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return (None if fp8_dir is None else str(fp8_dir)), str(dense_dir)
