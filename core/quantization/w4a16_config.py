"""A checkpoint's GPTQ or AWQ ``quantization_config`` (config.json), read and checked once at load.

Why its own file: the engine decides from it whether a checkpoint runs quantized, and every
refusal (a format, bit width or packing this release cannot run) happens here, before any weight
is read, with a message that names the format and what is supported. Nothing falls back to dense.
"""
from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_METHODS = ("gptq", "awq")
GPTQ_BITS = (4, 8)
AWQ_BITS = (4,)
GPTQ_FORMATS = ("gptq", "gptq_v2")  # v1 stores each zero point minus one; v2 stores it as is
AWQ_VERSIONS = ("gemm",)


@dataclass(frozen=True)
class W4A16Config:
    """What the packed tensors of every quantized linear layer mean.

    ``method``: gptq or awq; ``group_size``: input features per scale (-1: one group per column);
    ``zero_offset``: what the stored zero points lack (1 for GPTQ v1 checkpoints, else 0);
    ``sym``: GPTQ's symmetric flag (informational: the stored zero points are used either way)."""

    method: str
    bits: int
    group_size: int
    desc_act: bool = False
    sym: bool = True
    zero_offset: int = 0

    def describe(self) -> str:
        extra = f", desc_act={self.desc_act}, sym={self.sym}" if self.method == "gptq" else ""
        return f"{self.method} (bits={self.bits}, group_size={self.group_size}{extra})"


def read_w4a16_config(quantization_config: dict | None) -> W4A16Config | None:
    """The checkpoint's GPTQ/AWQ config, None when it has none; ValueError for what cannot run here."""
    if quantization_config is None:
        return None
    if not isinstance(quantization_config, dict):  # transformers may hand a config object
        quantization_config = quantization_config.to_dict()
    method = str(quantization_config.get("quant_method", "")).lower()
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"the checkpoint's quantization_config has quant_method={method or None!r}, which this "
                         f"release cannot run; supported: {', '.join(SUPPORTED_METHODS)}, fp8 (and GGUF files)")
    return _gptq(quantization_config) if method == "gptq" else _awq(quantization_config)


def _group_size(method: str, value, in_features_hint: str) -> int:
    if not isinstance(value, int) or (value != -1 and value <= 0):
        raise ValueError(f"{method} quantization_config group_size={value!r}: use -1 ({in_features_hint}) or a "
                         "positive number of input features")
    return value


def _gptq(cfg: dict) -> W4A16Config:
    bits = cfg.get("bits")
    if bits not in GPTQ_BITS:
        raise ValueError(f"gptq quantization_config bits={bits!r} cannot run here; supported GPTQ bits: "
                         f"{', '.join(map(str, GPTQ_BITS))} (3-bit and 2-bit packings have no kernel)")
    fmt = cfg.get("checkpoint_format", "gptq")
    if cfg.get("is_marlin_format"):
        fmt = "marlin"
    if fmt not in GPTQ_FORMATS:
        raise ValueError(f"gptq quantization_config checkpoint_format={fmt!r} cannot run here; supported: "
                         f"{', '.join(GPTQ_FORMATS)}")
    if cfg.get("lm_head"):
        raise ValueError("gptq quantization_config lm_head=True: a quantized LM head is not supported in this "
                         "release (the decoder's linear layers are)")
    if cfg.get("dynamic"):
        raise ValueError("gptq quantization_config 'dynamic' (per-module overrides of bits/group_size) is not "
                         "supported in this release; every quantized layer must share one config")
    return W4A16Config("gptq", bits, _group_size("gptq", cfg.get("group_size", -1), "one group"),
                       desc_act=bool(cfg.get("desc_act", False)), sym=bool(cfg.get("sym", True)),
                       zero_offset=1 if fmt == "gptq" else 0)


def _awq(cfg: dict) -> W4A16Config:
    bits = cfg.get("bits", cfg.get("w_bit"))
    if bits not in AWQ_BITS:
        raise ValueError(f"awq quantization_config bits={bits!r} cannot run here; supported AWQ bits: "
                         f"{', '.join(map(str, AWQ_BITS))}")
    version = str(cfg.get("version", "gemm")).lower()
    if version not in AWQ_VERSIONS:
        raise ValueError(f"awq quantization_config version={version!r} cannot run here; supported: "
                         f"{', '.join(AWQ_VERSIONS)} (GEMV packings are laid out differently)")
    if not cfg.get("zero_point", True):
        raise ValueError("awq quantization_config zero_point=False cannot run here; supported: zero_point=True "
                         "(AutoAWQ's default)")
    group = _group_size("awq", cfg.get("group_size", cfg.get("q_group_size", 128)), "one group")
    return W4A16Config("awq", bits, group, sym=False)
