"""K-quant files written by llama.cpp's own llama-quantize (``tests/fixtures/gguf_kquants/``, see its README):
each supported mix runs quantized with the greedy tokens of the same file dequantized (``dequantize_gguf=True``,
transformers' reader), holds the file's blocks unaltered, and dequantizes and multiplies them as the ``gguf``
package's reference does.
"""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from kquant_files import FTYPES, fixture_path, regenerate_kquant_fixtures
from pagedllm import LLM, SamplingParams
from pagedllm.loader import resolve_model
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization.gguf_weight import dequantize_reference

# The mixes pagedllm runs quantized, with the K-quant that dominates each (llama-quantize's ftype -> type).
SUPPORTED = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}
assert set(SUPPORTED) == set(FTYPES)

PROMPTS = [[17, 40, 90, 200], [5, 100, 200, 300, 12, 7]]  # token ids: the fixtures' vocabulary is 384 tokens


def _llm(ftype: str, **kwargs) -> LLM:
    return LLM(str(fixture_path(ftype)), dtype="float32", kv_cache_memory=8 << 20, seed=0, **kwargs)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))  # the dense conversions stay in tmp


def _file_types(ftype: str) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(fixture_path(ftype)).tensors}


@pytest.mark.parametrize("ftype", list(SUPPORTED))
def test_quantized_greedy_tokens_equal_the_dequantized_file(ftype):
    types = _file_types(ftype)
    assert types["blk.0.attn_q.weight"] == SUPPORTED[ftype]  # llama-quantize really wrote the K-quant
    quantized = _llm(ftype)
    held = {w.type_name for m in quantized.llm_engine.runner.model.modules() if isinstance(m, LinearBase)
            for w in m.linear_method.weights}
    assert SUPPORTED[ftype] in held
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in quantized.generate(PROMPTS, params, use_tqdm=False)]
    dense = _llm(ftype, dequantize_gguf=True)
    want = [o.outputs[0].token_ids for o in dense.generate(PROMPTS, params, use_tqdm=False)]
    assert got == want
    assert len(set(got[0])) > 3  # the fixture's model does not repeat one token: the comparison has teeth


@pytest.mark.parametrize("ftype", list(SUPPORTED))
def test_held_blocks_are_the_files_and_match_the_gguf_reference(ftype):
    """Every quantized row of the file is held byte for byte (q/k rows may be reordered, never re-encoded), and
    pagedllm's dequantization and matmul of each held tensor equal the ``gguf`` package's dequantization."""
    model = _llm(ftype).llm_engine.runner.model
    held = [w for m in model.modules() if isinstance(m, LinearBase) for w in m.linear_method.weights]
    held.append(model.model.embed_tokens.weight_data)
    held_rows = {bytes(row) for w in held if w.quantized for row in w.data.numpy()}
    reader = GGUFReader(fixture_path(ftype))
    quantized_tensors = [t for t in reader.tensors if t.tensor_type.name.endswith("_K")]
    assert quantized_tensors
    for t in quantized_tensors:
        data = np.asarray(t.data)
        rows = data.reshape(-1, data.shape[-1])  # the reader's [rows, row bytes]
        assert all(bytes(r) in held_rows for r in rows), t.name
    x = torch.randn(3, held[0].cols, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for w in held:
        if not w.quantized:
            continue
        reference = dequantize_reference(w.data, w.qtype)
        torch.testing.assert_close(w.dequantize(), reference, rtol=0, atol=0, msg=lambda m: f"{w.name}: {m}")
        if w.cols == x.shape[1]:
            torch.testing.assert_close(w.matmul(x.float()).double(), x @ reference.double().T, rtol=1e-4, atol=1e-3)


@pytest.mark.slow  # runs llama-quantize six times
def test_fixtures_regenerate_with_llama_quantize(tmp_path):
    """The committed files are what the helper writes: same tensors, same types, per mix."""
    from pagedllm.benchmarks.llamacpp_build import find_binary

    binary = find_binary("llama-quantize")
    if binary is None:
        pytest.skip("llama-quantize is not built here: `pagedllm bench llamacpp --build` builds it (tens of minutes)")
    written = regenerate_kquant_fixtures(str(binary), resolve_model("smollm2").gguf_file, tmp_path)
    for ftype, path in written.items():
        fresh = {t.name: (t.tensor_type.name, tuple(t.shape)) for t in GGUFReader(path).tensors}
        committed = {t.name: (t.tensor_type.name, tuple(t.shape)) for t in GGUFReader(fixture_path(ftype)).tensors}
        assert fresh == committed, ftype
        assert GGMLQuantizationType[SUPPORTED[ftype]].name in {v[0] for v in fresh.values()}
