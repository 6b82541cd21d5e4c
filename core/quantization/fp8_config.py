"""fp8 weights: whether a model runs them, and how its checkpoint stores them, decided once at load.

Why its own file: ``quantization='fp8'`` has two sources (vLLM's): a bf16/fp16/fp32 checkpoint quantized
to e4m3fn per output channel while it loads ("online"), or a checkpoint already in fp8 (config.json
``quantization_config: {"quant_method": "fp8", "activation_scheme": ...}``, tensors ``weight`` in
float8_e4m3fn with a ``weight_scale`` per tensor or per channel, optional ``input_scale``). Every
refusal (block-wise scales, e5m2, an unknown activation scheme) happens here, before any weight is
read, with a message that names the format and what is supported. Nothing falls back to dense.
"""
from __future__ import annotations

from dataclasses import dataclass

ACTIVATION_SCHEMES = ("dynamic", "static")


@dataclass(frozen=True)
class Fp8Config:
    """``serialized``: the checkpoint stores fp8 weights (else they are quantized at load);
    ``activation_scheme``: the checkpoint's (activations stay in the compute dtype either way: w8a16)."""

    serialized: bool
    activation_scheme: str = "dynamic"

    @property
    def method(self) -> str:
        return "fp8"

    def describe(self) -> str:
        source = "fp8 checkpoint" if self.serialized else "quantized at load"
        return f"fp8 (e4m3fn weights, per-channel scales, {source}, activation_scheme={self.activation_scheme})"


def quant_method(quantization_config) -> str | None:
    """The checkpoint's ``quant_method`` (lower case), None without a quantization_config."""
    if quantization_config is None:
        return None
    if not isinstance(quantization_config, dict):  # transformers may hand a config object
        quantization_config = quantization_config.to_dict()
    return str(quantization_config.get("quant_method", "")).lower() or None


def read_fp8_config(quantization_config) -> Fp8Config:
    """An fp8 checkpoint's config; ValueError for what this release cannot run."""
    if not isinstance(quantization_config, dict):
        quantization_config = quantization_config.to_dict()
    block = quantization_config.get("weight_block_size")
    if block is not None:
        raise ValueError(f"fp8 quantization_config weight_block_size={list(block)!r} (block-wise scales, "
                         "'weight_scale_inv', DeepSeek style) cannot run in this release; supported: fp8 "
                         "checkpoints with a per-tensor or per-channel 'weight_scale', or quantization='fp8' on "
                         "a bf16/fp16/fp32 checkpoint")
    scheme = str(quantization_config.get("activation_scheme", "dynamic")).lower()
    if scheme not in ACTIVATION_SCHEMES:
        raise ValueError(f"fp8 quantization_config activation_scheme={scheme!r} cannot run here; supported: "
                         f"{', '.join(ACTIVATION_SCHEMES)}")
    fmt = str(quantization_config.get("fmt", "e4m3")).lower()
    if fmt != "e4m3":
        raise ValueError(f"fp8 quantization_config fmt={fmt!r} cannot run here; supported: e4m3 "
                         "(float8_e4m3fn weights)")
    return Fp8Config(serialized=True, activation_scheme=scheme)
