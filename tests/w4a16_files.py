"""GPTQ and AWQ checkpoints for tests, written by a small round-to-nearest quantizer (shared by
tests/quantization and tests/lora: a uniquely named module, as ``model_fixtures``).

It follows the published packings (AutoGPTQ's ``QuantLinear.pack``, AutoAWQ's ``WQLinear_GEMM``)
written out slot by slot here, independently of ``pagedllm.quantization.w4a16_format``, with any
shape, bit width, group or desc_act a test needs (checkpoints of a real library, auto-round, are in
quantization/autoround_checkpoints). Like them it quantizes the
decoder's linear layers only (not embeddings, norms or the LM head).

Each call also writes the same weights dequantized to a dense float32 checkpoint (computed here
from the integers and scales before packing): the oracle for the quantized path's tokens.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: bit slot p holds column AWQ_PACK_ORDER[p] of eight
LINEAR = re.compile(r"\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
SHARED_INPUT = re.compile(r"\.(self_attn\.[qkv]_proj|mlp\.(gate|up)_proj)\.weight$")  # layers that read one input


def round_to_nearest(weight: np.ndarray, bits: int, groups_of_column: np.ndarray, n_groups: int, sym: bool,
                     min_zero: int = 0):
    """Integer codes [out, in], zero points [groups, out] and float16 scales [groups, out] of ``weight``."""
    maxq = 2 ** bits - 1
    out_features = weight.shape[0]
    scales = np.zeros((n_groups, out_features), np.float16)
    zeros = np.zeros((n_groups, out_features), np.int64)
    codes = np.zeros(weight.shape, np.int64)
    for g in range(n_groups):
        cols = np.nonzero(groups_of_column == g)[0]
        w = weight[:, cols].astype(np.float64)
        lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
        if sym:
            hi = np.maximum(-lo, hi)
            lo = -hi
        scale = np.where(hi > lo, (hi - lo) / maxq, 1.0).astype(np.float16)
        s = scale.astype(np.float64)
        zero = np.full(out_features, (maxq + 1) // 2) if sym else np.clip(np.round(-lo / s), min_zero, maxq)
        codes[:, cols] = np.clip(np.round(w / s[:, None]) + zero[:, None], 0, maxq)
        scales[g], zeros[g] = scale, zero
    return codes, zeros, scales


def to_int32(words: np.ndarray) -> torch.Tensor:
    """uint32 bit patterns held in int64 -> int32 (the checkpoints store them signed)."""
    return torch.from_numpy((words.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32).copy())


def pack_gptq_rows(values: np.ndarray, bits: int) -> torch.Tensor:
    """[in, out] -> int32 [in / pack, out]: word r holds rows pack*r + j at bits*j (AutoGPTQ qweight)."""
    pack = 32 // bits
    words = np.zeros((values.shape[0] // pack, values.shape[1]), np.int64)
    for j in range(pack):
        words |= (values[j::pack] & (2 ** bits - 1)) << (bits * j)
    return to_int32(words)


def pack_gptq_cols(values: np.ndarray, bits: int) -> torch.Tensor:
    """[groups, out] -> int32 [groups, out / pack]: word c holds columns pack*c + j at bits*j (qzeros)."""
    return pack_gptq_rows(values.T, bits).t().contiguous()


def pack_awq_cols(values: np.ndarray) -> torch.Tensor:
    """[rows, out] -> int32 [rows, out / 8]: slot p of word c holds column 8c + AWQ_PACK_ORDER[p]."""
    words = np.zeros((values.shape[0], values.shape[1] // 8), np.int64)
    for p, column in enumerate(AWQ_PACK_ORDER):
        words |= (values[:, column::8] & 15) << (4 * p)
    return to_int32(words)


def quantize_linear(weight: torch.Tensor, method: str, bits: int, group_size: int, sym: bool, desc_act: bool,
                    checkpoint_format: str, rng: np.random.Generator, order: np.ndarray | None = None):
    """(tensors under their checkpoint suffixes, the dequantized float32 weight [out, in]); ``order``: the
    desc_act column order (default: a random one)."""
    w = weight.double().numpy()
    out_features, in_features = w.shape
    group = in_features if group_size == -1 else group_size
    n_groups = -(-in_features // group)
    if order is None:
        order = rng.permutation(in_features) if desc_act else np.arange(in_features)
    groups_of_column = np.empty(in_features, np.int64)
    groups_of_column[order] = np.arange(in_features) // group  # desc_act: groups follow a column order
    v1 = method == "gptq" and checkpoint_format == "gptq"
    codes, zeros, scales = round_to_nearest(w, bits, groups_of_column, n_groups, sym, min_zero=1 if v1 else 0)
    dense = (codes - zeros[groups_of_column].T) * scales.astype(np.float64)[groups_of_column].T
    if method == "gptq":
        tensors = {"qweight": pack_gptq_rows(codes.T, bits),
                   "qzeros": pack_gptq_cols(zeros - 1 if v1 else zeros, bits),
                   "scales": torch.from_numpy(scales),
                   "g_idx": torch.from_numpy(groups_of_column.astype(np.int32))}
    else:
        tensors = {"qweight": pack_awq_cols(codes.T), "qzeros": pack_awq_cols(zeros),
                   "scales": torch.from_numpy(scales)}
    return tensors, torch.from_numpy(dense).float()


def quantization_config(method: str, bits: int, group_size: int, sym: bool, desc_act: bool,
                        checkpoint_format: str) -> dict:
    if method == "gptq":
        return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
                "damp_percent": 0.01, "true_sequential": True, "checkpoint_format": checkpoint_format}
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def write_quantized(source: str | Path, quantized: str | Path, dense: str | Path, method: str, bits: int = 4,
                    group_size: int = 32, sym: bool = True, desc_act: bool = False,
                    checkpoint_format: str = "gptq", seed: int = 0, shared_order: bool = True,
                    write_g_idx: bool = True, zero_biases: bool = False) -> tuple[str, str]:
    """Quantize the float checkpoint folder ``source`` into ``quantized`` and its dequantized twin ``dense``.

    ``shared_order``: desc_act layers that read the same input (q/k/v, gate/up) share one column order, as
    GPTQ's (their Hessians are the same); False gives each its own, so a fused layer's shards differ.
    ``write_g_idx=False``: GPTQ without g_idx tensors (older checkpoints without desc_act);
    ``zero_biases``: a zero bias for every quantized layer without one (what AutoGPTQ before 0.5 wrote)."""
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(seed)
    state = load_file(str(Path(source) / "model.safetensors"))
    packed, dequantized, orders = {}, {}, {}
    for name, tensor in state.items():
        if LINEAR.search(name):
            same_input = SHARED_INPUT.sub(lambda m: ".attention_input" if "attn" in m[0] else ".mlp_input", name)
            if shared_order and desc_act and same_input not in orders:
                orders[same_input] = rng.permutation(tensor.shape[1])
            tensors, dense_weight = quantize_linear(tensor, method, bits, group_size, sym, desc_act,
                                                    checkpoint_format, rng, orders.get(same_input))
            prefix = name.removesuffix(".weight")
            if not write_g_idx:
                tensors.pop("g_idx", None)
            if zero_biases and f"{prefix}.bias" not in state:
                tensors["bias"] = torch.zeros(tensor.shape[0], dtype=torch.float16)
            packed.update({f"{prefix}.{k}": v for k, v in tensors.items()})
            dequantized[name] = dense_weight
        else:
            packed[name] = dequantized[name] = tensor
    for folder, tensors, quant in ((quantized, packed, True), (dense, dequantized, False)):
        folder = Path(folder)
        shutil.copytree(source, folder, dirs_exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        if quant:
            config["quantization_config"] = quantization_config(method, bits, group_size, sym, desc_act,
                                                                checkpoint_format)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return str(quantized), str(dense)


def main(argv=None) -> None:
    """``python -P tests/w4a16_files.py SOURCE QUANTIZED DENSE {gptq,awq} [--group-size N] ...``:
    the checkpoints docs/benchmarks.md times (a real model's folder quantized round-to-nearest)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source")
    parser.add_argument("quantized")
    parser.add_argument("dense")
    parser.add_argument("method", choices=("gptq", "awq"))
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--asym", action="store_true", help="GPTQ: sym=False")
    parser.add_argument("--desc-act", action="store_true")
    args = parser.parse_args(argv)
    write_quantized(args.source, args.quantized, args.dense, args.method, bits=args.bits,
                    group_size=args.group_size, sym=not args.asym, desc_act=args.desc_act)


if __name__ == "__main__":
    main()
