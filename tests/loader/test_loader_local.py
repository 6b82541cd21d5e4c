"""Local folders: sharded safetensors, .bin checkpoints, ambiguous GGUF folders."""
import json

import pytest
import torch

from pagedllm.loader import iterate_weights, resolve_model
from pagedllm.loader.sources import LocalPathSource


def assert_same_state(weights, model):
    expected = model.state_dict()
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def test_sharded_safetensors_folder_yields_exact_state_dict(tmp_path, tiny_llama):
    model = tiny_llama
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the test needs several shards"

    resolved = resolve_model(str(tmp_path))
    assert resolved.source == "local"
    assert resolved.path == str(tmp_path.resolve())
    assert resolved.name == str(tmp_path)
    assert_same_state(dict(iterate_weights(resolved.path)), model)


def test_iterate_weights_is_lazy(tmp_path, tiny_llama):
    tiny_llama.save_pretrained(tmp_path)
    weights = iterate_weights(tmp_path)
    name, tensor = next(weights)
    assert isinstance(name, str) and isinstance(tensor, torch.Tensor)


def test_bin_checkpoint(tmp_path, tiny_llama):
    model = tiny_llama
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    resolved = resolve_model(tmp_path)
    assert_same_state(dict(iterate_weights(resolved.path)), model)


def test_folder_without_weights_names_what_was_looked_for(tmp_path, tiny_llama):
    tiny_llama.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.safetensors.*pytorch_model"):
        list(iterate_weights(tmp_path))


def test_folder_with_two_ggufs_names_both(tmp_path):
    (tmp_path / "a.Q4_0.gguf").write_bytes(b"")
    (tmp_path / "b.Q8_0.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a\.Q4_0\.gguf, b\.Q8_0\.gguf"):
        resolve_model(str(tmp_path))


def test_gguf_file_and_single_gguf_folder_resolve_to_the_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    source = LocalPathSource()
    assert source.resolve(str(gguf)) == str(gguf.resolve())
    assert source.resolve(str(tmp_path)) == str(gguf.resolve())


def test_missing_path_is_declined_not_raised(tmp_path):
    found = LocalPathSource().lookup(str(tmp_path / "nope"), revision=None, download_dir=None)
    assert found.path is None and "no such" in found.reason
