"""``/v1/embeddings`` and ``/pooling`` on one server that hosts both bundled models (``serve --also``).

Oracles: sentence-transformers' ``encode`` for the vectors, the ``openai`` SDK's own types and
base64 decoding, and LangChain's ``OpenAIEmbeddings`` client.
"""
from __future__ import annotations

import numpy as np
import openai
import pytest
import requests
from live_server import LiveServer
from model_fixtures import BUNDLED, make_tiny_encoder, minilm_path

pytest.importorskip("sentence_transformers")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Embeddings map text to vectors."]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    def engine(model, **kwargs):
        return AsyncEngine.from_config(EngineConfig.from_kwargs(model=model, dtype="float32", **kwargs))

    matryoshka = make_tiny_encoder(tmp_path_factory.mktemp("mrl"), "bert", is_matryoshka=True)
    chat = engine(BUNDLED, kv_cache_memory=64 << 20, max_model_len=1024)
    extra = [(engine(MINILM), [MINILM]), (engine(matryoshka, pooler_config={"pooling_type": "CLS"}), ["mrl"])]
    live = LiveServer(build_app(chat, [BUNDLED], also=extra), chat)
    yield live
    live.stop()
    for e, _ in extra:
        e.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="EMPTY")


@pytest.fixture(scope="module")
def st_vectors():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu").encode(TEXTS, convert_to_numpy=True)


def close(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return np.abs(ours - theirs).max() <= 1e-5


def test_one_server_routes_chat_and_embeddings_by_model(client, server, st_vectors):
    listed = {m.id for m in client.models.list()}
    assert listed == {BUNDLED, MINILM, "mrl"}
    chat = client.chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.choices[0].message.content
    emb = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert isinstance(emb, openai.types.CreateEmbeddingResponse)
    assert [d.index for d in emb.data] == [0, 1, 2] and emb.model == MINILM
    assert close([d.embedding for d in emb.data], st_vectors)
    assert emb.usage.prompt_tokens == emb.usage.total_tokens > 3 * 3
    metrics = requests.get(server.base + "/metrics", timeout=10).text
    assert f'pagedllm:prompt_tokens_total{{model_name="{MINILM}"}}' in metrics
    assert f'pagedllm:prompt_tokens_total{{model_name="{BUNDLED}"}}' in metrics


def test_base64_is_what_the_sdk_decodes_by_default(client, st_vectors):
    emb = client.embeddings.create(model=MINILM, input=TEXTS)  # the SDK asks for base64 and decodes it
    assert close([d.embedding for d in emb.data], st_vectors)
    raw = requests.post(client.base_url.join("embeddings").__str__(), json={"model": MINILM, "input": TEXTS[0],
                                                                            "encoding_format": "base64"}, timeout=30)
    assert isinstance(raw.json()["data"][0]["embedding"], str)


def test_token_id_inputs_equal_text_inputs(client):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(minilm_path())(TEXTS)["input_ids"]
    by_text = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    by_ids = client.embeddings.create(model=MINILM, input=ids, encoding_format="float")
    one = client.embeddings.create(model=MINILM, input=ids[0], encoding_format="float")
    assert close([d.embedding for d in by_ids.data], [d.embedding for d in by_text.data])
    assert close(one.data[0].embedding, by_text.data[0].embedding)


def test_dimensions_on_a_matryoshka_model(client):
    full = client.embeddings.create(model="mrl", input=TEXTS[0], encoding_format="float").data[0].embedding
    cut = client.embeddings.create(model="mrl", input=TEXTS[0], dimensions=16).data[0].embedding
    assert len(full) == 64 and len(cut) == 16
    want = np.asarray(full[:16]) / np.linalg.norm(full[:16])  # full is normalized: renormalize its head
    assert np.abs(np.asarray(cut) - want).max() <= 1e-5


def test_langchain_openai_embeddings_against_the_server(server, st_vectors):
    langchain_openai = pytest.importorskip("langchain_openai")
    lc = langchain_openai.OpenAIEmbeddings(model=MINILM, base_url=server.url, api_key="EMPTY",
                                           check_embedding_ctx_length=False)
    assert close(lc.embed_documents(TEXTS), st_vectors)
    assert close(lc.embed_query(TEXTS[1]), st_vectors[1])


def test_pooling_route(server, st_vectors):
    r = requests.post(server.base + "/pooling", json={"model": MINILM, "input": TEXTS[:2]}, timeout=30)
    assert r.status_code == 200, r.text
    assert close([d["data"] for d in r.json()["data"]], st_vectors[:2])


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": [101, 40000, 102]}, "input"),
    ({"input": "word " * 300}, "input"),
    ({"input": "x", "dimensions": 8}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
])
def test_bad_input_is_a_400_naming_the_field(server, client, body, param):
    r = requests.post(server.url + "/embeddings", json={"model": MINILM, **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and set(error) == {"message", "type", "param", "code"}
    assert len(client.embeddings.create(model=MINILM, input="next").data[0].embedding) == 384
    engine = [m for m in server.app.state.models.models if m.names == [MINILM]][0].engine.engine
    assert not engine.sequences and not engine.has_unfinished_requests()


def test_truncate_prompt_tokens_makes_a_long_input_fit(client):
    long = "word " * 300
    emb = client.embeddings.create(model=MINILM, input=long, extra_body={"truncate_prompt_tokens": 256})
    assert emb.usage.prompt_tokens == 256


def test_wrong_runner_and_unknown_model(client):
    with pytest.raises(openai.BadRequestError, match="runner='pooling'"):
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="runner='generate'"):
        client.embeddings.create(model=BUNDLED, input="hi")
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert MINILM in exc.value.body["message"] and BUNDLED in exc.value.body["message"]
