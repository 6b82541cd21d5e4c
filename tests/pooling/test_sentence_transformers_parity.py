"""The bundled all-MiniLM-L6-v2 embeds as sentence-transformers' own ``encode`` does (the oracle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import minilm_path

pytest.importorskip("sentence_transformers")


def texts_of_lengths(tokenizer, lengths: list[int]) -> list[str]:
    """Texts whose encodings (with [CLS] and [SEP]) have exactly the given token counts (>= 3)."""
    words = [w for w in tokenizer.vocab if w.isalpha() and w.islower() and len(w) > 3][:3000]
    rng = np.random.default_rng(0)
    texts = []
    for n in lengths:
        text = " ".join(rng.choice(words, n - 2))
        assert len(tokenizer(text)["input_ids"]) == n, n
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def minilm():
    from pagedllm import LLM

    return LLM(minilm_path(), dtype="float32", max_model_len=512)


@pytest.fixture(scope="module")
def st_models():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path(), device="cpu")
    st.max_seq_length = 512
    raw = SentenceTransformer(modules=[st[0], st[1]], device="cpu")  # without its Normalize module
    return st, raw


def assert_same_vectors(ours: np.ndarray, theirs: np.ndarray) -> None:
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.99999, cos.min()
    assert np.abs(ours - theirs).max(axis=1).max() <= 1e-5, np.abs(ours - theirs).max()


@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_equal_sentence_transformers(minilm, st_models, normalize):
    from pagedllm import PoolingParams

    lengths = np.linspace(3, 512, 64).astype(int).tolist()
    texts = texts_of_lengths(minilm.get_tokenizer(), lengths)
    outs = minilm.embed(texts, PoolingParams(normalize=None if normalize else False), use_tqdm=False)
    assert [len(o.prompt_token_ids) for o in outs] == lengths
    ours = np.array([o.outputs.embedding for o in outs])
    st = st_models[0] if normalize else st_models[1]
    theirs = st.encode(texts, batch_size=64, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (64, 384)
    assert_same_vectors(ours, theirs)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize  # raw mean-pooled vectors are not unit length


def test_defaults_come_from_the_sentence_transformers_files():
    """Without max_model_len the folder's max_seq_length (256) is the limit, as sentence-transformers
    truncates; MEAN pooling and normalisation come from modules.json."""
    from pagedllm import LLM

    import json
    import os

    def read(name):
        with open(os.path.join(minilm_path(), name)) as f:
            return json.load(f)

    llm = LLM(minilm_path(), dtype="float32")
    engine = llm.llm_engine
    assert (engine.runner_type, engine.max_model_len) == ("pooling", read("sentence_bert_config.json")["max_seq_length"])
    assert read("1_Pooling/config.json")["pooling_mode_mean_tokens"] and engine.pooler.pooling_type == "MEAN"
    has_normalize = any(m["type"].endswith(".Normalize") for m in read("modules.json"))
    assert engine.pooler.normalize == has_normalize


def test_truncation_matches_sentence_transformers(minilm, st_models):
    """``truncate_prompt_tokens=k`` cuts as the tokenizer does (keeping [SEP]): equal to sentence-
    transformers at max_seq_length=k."""
    from sentence_transformers import SentenceTransformer

    texts = texts_of_lengths(minilm.get_tokenizer(), [40, 100, 300])
    ours = np.array([o.outputs.embedding for o in minilm.embed(texts, truncate_prompt_tokens=32, use_tqdm=False)])
    st = SentenceTransformer(minilm_path(), device="cpu")
    st.max_seq_length = 32
    assert_same_vectors(ours, st.encode(texts, convert_to_numpy=True))


def test_encode_returns_tensors(minilm):
    out = minilm.encode(["a short text"], use_tqdm=False)[0]
    assert isinstance(out.outputs.data, torch.Tensor) and out.outputs.data.shape == (384,)
    assert out.finished
