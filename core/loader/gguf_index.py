"""The tensor table of a GGUF file, read without parsing its metadata values.

Why: ``gguf.GGUFReader`` builds a numpy view of every metadata value, including the tokenizer's
~100,000 strings: ~4 s for the bundled model, most of a quantized load. The quantized path needs
only the architecture, the alignment and the tensor table (the config and tokenizer come from the
cached conversion), so this reader skips the other values by their lengths (GGUF v2/v3 layout).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY = 8, 9


@dataclass(slots=True, frozen=True)
class TensorEntry:
    """``shape`` in ggml order (the row length first); ``data``: the tensor's bytes (a view of the file)."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    data: np.ndarray


def read_gguf_index(path: str | os.PathLike) -> tuple[str, list[TensorEntry]]:
    """(``general.architecture``, the tensors in file order) of a GGUF v2/v3 file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"{path}: not a GGUF v2/v3 file (magic {magic!r}, version {version})")
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8:at + 8 + length]).decode("utf-8"), at + 8 + length

    def skip_value(kind: int, at: int) -> int:
        if kind == _STRING:
            return at + 8 + struct.unpack_from("<Q", buf, at)[0]
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item in _SCALAR_SIZES:
                return at + count * _SCALAR_SIZES[item]
            for _ in range(count):
                at = skip_value(item, at)
            return at
        return at + _SCALAR_SIZES[kind]

    architecture, alignment = "?", 32
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key == "general.architecture":
            architecture, pos = string(pos)
        elif key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            pos = skip_value(kind, pos)
    infos = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        qtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, shape, qtype, offset))
    start = -(-pos // alignment) * alignment
    whole = np.frombuffer(buf, dtype=np.uint8)
    tensors = []
    for name, shape, qtype, offset in infos:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        row_bytes = shape[0] // block * size
        rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        data = whole[start + offset:start + offset + rows * row_bytes].reshape(rows, row_bytes)
        tensors.append(TensorEntry(name, tuple(int(d) for d in shape), int(qtype), data))
    return architecture, tensors
