"""Hub cache (offline), ModelScope switch, and the single error when nothing resolves."""
import pytest
import torch

from pagedllm.loader import iterate_weights, resolve_model
from pagedllm.loader.resolve import model_sources

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hf_cache(root, model, repo_id="tiny-org/tiny-llama"):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    model.save_pretrained(snapshot)
    return snapshot


def test_builtin_sources_are_registered_in_order():
    assert [s.name for s in model_sources()][:4] == ["local", "bundled", "huggingface", "modelscope"]


@pytest.mark.parametrize("revision", [None, COMMIT])
def test_offline_hf_cache_resolves(tmp_path, monkeypatch, revision, tiny_llama):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_llama
    snapshot = fake_hf_cache(tmp_path / "hf", model)
    resolved = resolve_model("tiny-org/tiny-llama", revision=revision, download_dir=tmp_path / "hf")
    assert resolved.source == "huggingface"
    assert resolved.path == str(snapshot)
    weights = dict(iterate_weights(resolved.path))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_unknown_name_gives_one_error_listing_every_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        resolve_model("no-such-org/no-such-model", download_dir=tmp_path / "empty-hf")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message
    for name in ("local", "bundled", "huggingface", "modelscope"):
        assert f"- {name}:" in message
    assert "HF_HUB_OFFLINE" in message and "PAGEDLLM_USE_MODELSCOPE" in message


def test_modelscope_opt_in_explains_missing_package(tmp_path, monkeypatch):
    try:
        import modelscope  # noqa: F401

        pytest.skip("modelscope is installed here")
    except ImportError:
        pass
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PAGEDLLM_USE_MODELSCOPE", "1")
    with pytest.raises(ValueError, match="modelscope package is not installed"):
        resolve_model("no-such-org/no-such-model", download_dir=tmp_path)


def test_bad_model_argument():
    with pytest.raises(TypeError, match="model"):
        resolve_model(123)
    with pytest.raises(ValueError, match="model"):
        resolve_model("  ")
