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
            writer.add_tensor(tensor.name, quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
