"""The embedding adapters in-process: LangChain ``VLLMEmbeddings``, LlamaIndex ``VllmEmbedding`` and the
OpenAI shim's ``embeddings.create``, on the bundled all-MiniLM-L6-v2.

Oracle: sentence-transformers' own ``encode`` of the same folder (max abs difference <= 1e-5).
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from model_fixtures import make_tiny_encoder, make_tiny_model, minilm_path

pytest.importorskip("sentence_transformers")
pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ENGINE = {"dtype": "float32"}  # every adapter below shares this one engine (same config)
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Embeddings map text to vectors.",
         "A quick brown fox jumps over the lazy dog.", "Rain is expected in Quillmere tomorrow."]
LONG = "word " * 300  # 302 tokens: past MiniLM's 256


@pytest.fixture(scope="module")
def st():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


@pytest.fixture(scope="module")
def st_vectors(st):
    return st.encode(TEXTS, convert_to_numpy=True)


def assert_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.fixture(scope="module")
def lc():
    from pagedllm.integrations.langchain import VLLMEmbeddings

    return VLLMEmbeddings(**ENGINE)


@pytest.fixture(scope="module")
def li():
    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    return VllmEmbedding(**ENGINE)


def test_langchain_equals_sentence_transformers(lc, st_vectors):
    assert lc.model == MINILM  # the offline default
    assert_close(lc.embed_documents(TEXTS), st_vectors)
    assert_close(lc.embed_query(TEXTS[1]), st_vectors[1])

    async def both():
        return await lc.aembed_documents(TEXTS), await lc.aembed_query(TEXTS[2])

    docs, query = asyncio.run(both())
    assert_close(docs, st_vectors)
    assert_close(query, st_vectors[2])
    assert lc.embed_documents([]) == []


def test_llama_index_equals_sentence_transformers(li, st_vectors):
    assert li.model_name == MINILM
    assert_close(li.get_text_embedding_batch(TEXTS), st_vectors)
    assert_close(li.get_query_embedding(TEXTS[0]), st_vectors[0])
    assert_close(li.get_text_embedding(TEXTS[3]), st_vectors[3])

    async def both():
        return await li.aget_text_embedding_batch(TEXTS), await li.aget_query_embedding(TEXTS[4])

    docs, query = asyncio.run(both())
    assert_close(docs, st_vectors)
    assert_close(query, st_vectors[4])


def test_openai_shim_equals_sentence_transformers(st_vectors):
    from pagedllm.integrations.openai import AsyncOpenAI, OpenAI

    client = OpenAI(model=MINILM, **ENGINE)
    floats = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(len(TEXTS))) and floats.model == MINILM
    assert_close([d.embedding for d in floats.data], st_vectors)
    decoded = client.embeddings.create(model=MINILM, input=TEXTS[0])  # base64 on the wire, the SDK decodes
    assert_close(decoded.data[0].embedding, st_vectors[0])

    async def main():
        return await AsyncOpenAI(model=MINILM, **ENGINE).embeddings.create(model=MINILM, input=TEXTS[1:3])

    assert_close([d.embedding for d in asyncio.run(main()).data], st_vectors[1:3])


def test_adapters_share_one_engine_and_batch_a_call(lc, li):
    engine = lc.provider.engine
    assert li.provider.engine is engine  # one engine per config per process
    texts = [f"document number {i} about topic {i % 3}" for i in range(24)]
    steps = engine.engine.stats.num_steps
    lc.embed_documents(texts)
    assert engine.engine.stats.num_steps - steps <= len(texts) // 4  # queued together, not one by one


def test_truncate_prompt_tokens(lc, st):
    from pagedllm.integrations.langchain import VLLMEmbeddings

    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        lc.embed_query(LONG)  # refused, not silently cut
    cut = VLLMEmbeddings(truncate_prompt_tokens=-1, **ENGINE).embed_query(LONG)
    assert_close(cut, st.encode(LONG))  # sentence-transformers cuts to the model's 256 tokens too


def test_sync_call_inside_a_running_loop(lc, st_vectors):
    async def notebook_cell():
        return lc.embed_documents(TEXTS[:2])  # sync API, called where a loop is already running

    assert_close(asyncio.run(notebook_cell()), st_vectors[:2])


def test_dimensions_on_a_matryoshka_model(tmp_path):
    from pagedllm.integrations.langchain import VLLMEmbeddings
    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    path = make_tiny_encoder(tmp_path / "mrl", "bert", is_matryoshka=True)
    engine = {"vllm_kwargs": {"pooler_config": {"pooling_type": "CLS"}}, **ENGINE}
    full = np.asarray(VLLMEmbeddings(model=path, **engine).embed_query("hello there"))
    want = full[:16] / np.linalg.norm(full[:16])  # normalized: the cut head, renormalized
    assert full.shape == (64,)
    assert_close(VLLMEmbeddings(model=path, dimensions=16, **engine).embed_query("hello there"), want)
    assert_close(VllmEmbedding(model_name=path, dimensions=16, **engine).get_query_embedding("hello there"), want)


def test_dimensions_on_a_model_without_matryoshka_is_refused():
    from pagedllm.integrations.langchain import VLLMEmbeddings

    with pytest.raises(ValueError, match="dimensions=8"):
        VLLMEmbeddings(dimensions=8, **ENGINE).embed_query("hi")


def test_a_generation_model_asked_to_embed_names_the_runner(tmp_path):
    from pagedllm.integrations.langchain import VLLMEmbeddings
    from pagedllm.provider import get_provider

    path = make_tiny_model(tmp_path / "llama")
    engine = {"kv_cache_memory": 16 << 20, "max_model_len": 256}
    with pytest.raises(ValueError, match="runner='generate'"):
        VLLMEmbeddings(model=path, vllm_kwargs=engine).embed_documents(["hi"])
    with pytest.raises(ValueError, match="runner='generate'"):
        asyncio.run(get_provider(path, dtype="auto", **engine).aembed(["hi"]))


@pytest.mark.parametrize("bad, error, match", [
    ("one string", TypeError, "texts must be a list of strings, got str"),
    (["ok", None], TypeError, r"texts\[1\] must be a string"),
    (["ok", ""], ValueError, "empty"),
])
def test_bad_texts(lc, bad, error, match):
    with pytest.raises(error, match=match):
        lc.embed_documents(bad)
    assert len(lc.embed_query("still fine")) == 384  # the engine is fine afterwards


@pytest.mark.parametrize("field, value", [("dimensions", 0), ("truncate_prompt_tokens", 0), ("dimensions", "8x")])
def test_bad_options_fail_at_construction_naming_the_field(field, value):
    from pagedllm.integrations.langchain import VLLMEmbeddings
    from pagedllm.integrations.llama_index_embedding import VllmEmbedding

    for cls in (VLLMEmbeddings, VllmEmbedding):
        with pytest.raises(ValueError, match=field):
            cls(**{field: value})


@pytest.mark.parametrize("cls_path, typo, meant", [
    ("pagedllm.integrations.langchain.VLLMEmbeddings", "dimension", "dimensions"),
    ("pagedllm.integrations.llama_index_embedding.VllmEmbedding", "model", "model_name"),
])
def test_unknown_arguments_are_type_errors(cls_path, typo, meant):
    import importlib

    module, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(TypeError, match=f"did you mean {meant!r}"):
        cls(**{typo: 3})
