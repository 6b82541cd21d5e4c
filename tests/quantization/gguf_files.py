"""GGUF files for the tests, written with the ``gguf`` package: a copy of the bundled model with some
tensors re-stored in other types (a mixed file, as llama.cpp's mixes write them)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

# A mix over the first two layers and the embeddings: every type the gguf package writes, F16 and F32.
MIX = {
    "token_embd.weight": "Q4_0",  # the embeddings and the tied LM head
    "blk.0.attn_q.weight": "Q8_0",
    "blk.0.attn_k.weight": "F16",
    "blk.0.attn_v.weight": "Q5_0",
    "blk.0.ffn_gate.weight": "Q5_1",
    "blk.0.ffn_up.weight": "Q4_0",
    "blk.1.attn_output.weight": "F16",
    "blk.1.ffn_down.weight": "F32",
}


# The 2- and 3-bit K-quants (the gguf package dequantizes them but does not quantize): layers whose rows are
# whole 256-weight blocks (SmolLM2's ffn_down, 1536 columns; its other linears have 576).
LOW_BIT_MIX = {"blk.0.ffn_down.weight": "Q2_K", "blk.1.ffn_down.weight": "Q3_K", "blk.2.ffn_down.weight": "Q2_K",
               "blk.3.ffn_down.weight": "Q3_K"}


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def quantize_q2_k(values: np.ndarray) -> np.ndarray:
    """float32 [rows, k] -> Q2_K blocks [rows, k / 256 * 84] (ggml's layout: scales[16] with the scale in the low
    nibble and the min in the high one, qs[64] of 2-bit codes, d, dmin); a plain min/max fit per 16 weights,
    not llama.cpp's search: the tests need valid blocks of these values, not the best ones."""
    x = values.reshape(-1, 16, 16).astype(np.float64)  # [blocks, group, weight]
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    scale, minimum = (hi - lo) / 3, -lo
    d = _fp16_round(scale.max(-1) / 15)
    dmin = _fp16_round(minimum.max(-1) / 15)
    sc = np.clip(np.round(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), 0, 15)
    m = np.clip(np.round(np.divide(minimum, dmin[:, None], out=np.zeros_like(minimum), where=dmin[:, None] > 0)), 0, 15)
    step = (d[:, None] * sc)[..., None]
    q = np.clip(np.round(np.divide(x + (dmin[:, None] * m)[..., None], step, out=np.zeros_like(x), where=step > 0)), 0, 3)
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)  # weight 128 h + 32 j + l
    qs = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)
    scales = (sc.astype(np.uint8) | (m.astype(np.uint8) << 4))
    blocks = np.concatenate([scales, qs, _fp16_bytes(d).reshape(-1, 2), _fp16_bytes(dmin).reshape(-1, 2)], axis=1)
    return blocks.reshape(values.shape[0], -1)


def quantize_q3_k(values: np.ndarray) -> np.ndarray:
    """float32 [rows, k] -> Q3_K blocks [rows, k / 256 * 110] (hmask[32], qs[64], scales[12] of 16 signed 6-bit
    scales, d); codes -4..3 per 16 weights scaled by their group's absolute maximum."""
    x = values.reshape(-1, 16, 16).astype(np.float64)
    scale = np.abs(x).max(-1) / 4
    d = _fp16_round(scale.max(-1) / 31)
    sc = np.clip(np.round(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), -32, 31)
    step = (d[:, None] * sc)[..., None]
    q = np.clip(np.round(np.divide(x, step, out=np.zeros_like(x), where=step != 0)), -4, 3).astype(np.int64)
    low, high = (q & 3).astype(np.uint8), (q >= 0).astype(np.uint8)  # q = low - (high ? 0 : 4)
    low = low.reshape(-1, 2, 4, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(-1, 64)
    high = high.reshape(-1, 8, 32)  # bit J of hmask[l]: weight 32 J + l
    hmask = np.zeros((high.shape[0], 32), dtype=np.uint8)
    for j in range(8):
        hmask |= high[:, j] << j
    u = (sc + 32).astype(np.uint8)  # 16 six-bit values: low nibbles in bytes 0-7, high pairs in bytes 8-11
    packed = np.zeros((u.shape[0], 12), dtype=np.uint8)
    for i in range(16):
        packed[:, i % 8] |= (u[:, i] & 15) << (4 * (i // 8))
        packed[:, 8 + i % 4] |= (u[:, i] >> 4) << (2 * (i // 4))
    blocks = np.concatenate([hmask, qs, packed, _fp16_bytes(d).reshape(-1, 2)], axis=1)
    return blocks.reshape(values.shape[0], -1)


def _fp16_round(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float64)


OWN_QUANTIZERS = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k}


def write_mixed_copy(source: str, target: str, mix: dict[str, str] = MIX) -> None:
    """Copy ``source`` to ``target`` with the tensors named in ``mix`` dequantized and stored in their new type."""
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(target, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        new_type = mix.get(tensor.name)
        if new_type is None:
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        values = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if new_type in ("F32", "F16"):
            writer.add_tensor(tensor.name, values.astype(np.float32 if new_type == "F32" else np.float16))
        else:
            qtype = GGMLQuantizationType[new_type]
            quantize = OWN_QUANTIZERS.get(new_type) or (lambda v: quants.quantize(v, qtype))
            writer.add_tensor(tensor.name, quantize(values), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
