"""K-quant GGUF fixtures written by llama.cpp's own ``llama-quantize`` (the real-world writer, not the
``gguf`` package): a tiny random Llama model stored as F32 with the ``gguf`` package, then quantized
to each K-quant mix. The files are committed under ``tests/fixtures/gguf_kquants/``;
``regenerate_kquant_fixtures`` writes them again when llama.cpp is built (``pagedllm bench llamacpp
--build``). The model is 1 layer, hidden 256 (a K-quant block is 256 weights, so every matrix has whole
blocks and llama-quantize needs no fallback type), a 384-token vocabulary cut from the bundled tokenizer:
each file stays under half a megabyte."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf_kquants"
# llama-quantize's ftype names: the usual mixes, each written into kquant-<ftype>.gguf
FTYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")
VOCAB = 384
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 256, 256, 1, 4, 2


def fixture_path(ftype: str) -> Path:
    return FIXTURES / f"kquant-{ftype}.gguf"


def _tokenizer_fields(bundled_gguf: str) -> dict:
    """The bundled model's BPE tokenizer cut to its first ``VOCAB`` tokens, with the merges among them."""
    reader = GGUFReader(bundled_gguf)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    kept = set(tokens)
    merges = [m for m in reader.fields["tokenizer.ggml.merges"].contents()
              if all(part in kept for part in m.split(" ")) and m.replace(" ", "") in kept]
    return {"tokens": tokens, "token_type": reader.fields["tokenizer.ggml.token_type"].contents()[:VOCAB],
            "merges": merges}


def write_tiny_f32_gguf(path: str | Path, bundled_gguf: str, seed: int = 0) -> Path:
    """A random 1-layer Llama in F32, tied embeddings, with weights large enough that logits are not flat."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def w(rows, cols, scale=0.25):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("pagedllm tiny k-quant fixture")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(0)  # ALL_F32
    tok = _tokenizer_fields(bundled_gguf)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_type"])
    writer.add_token_merges(tok["merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", w(VOCAB, HIDDEN, 0.5))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(HEADS * head_dim, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(KV_HEADS * head_dim, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(KV_HEADS * head_dim, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(HIDDEN, HEADS * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(INTERMEDIATE, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(INTERMEDIATE, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(HIDDEN, INTERMEDIATE))
    writer.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def quantize_command(binary: str, source: str | Path, target: str | Path, ftype: str) -> list[str]:
    """llama-quantize as a user runs it: the ftype's own mix (the K-quant of the name for most tensors, the
    mix's choices for the rest)."""
    return [str(binary), str(source), str(target), ftype]


def regenerate_kquant_fixtures(binary: str, bundled_gguf: str, out_dir: str | Path = FIXTURES,
                               ftypes=FTYPES) -> dict[str, Path]:
    """Write the F32 model to a temporary file and quantize it to each of ``ftypes`` in ``out_dir``."""
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(prefix="pagedllm-kquant-") as tmp:
        source = write_tiny_f32_gguf(Path(tmp) / "tiny-f32.gguf", bundled_gguf)
        for ftype in ftypes:
            target = out_dir / f"kquant-{ftype}.gguf"
            subprocess.run(quantize_command(binary, source, target, ftype), check=True, capture_output=True, text=True)
            written[ftype] = target
    return written
