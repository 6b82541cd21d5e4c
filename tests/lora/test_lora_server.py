"""The server: --lora-modules adapters listed in /v1/models (parent = the base) and chosen by ``model`` through
the real openai SDK, outputs equal to PEFT's merged model; vLLM's runtime load/unload routes behind
VLLM_ALLOW_RUNTIME_LORA_UPDATING; unknown names and bad adapters answered as OpenAI errors."""
import json

import openai
import pytest
import requests

from live_server import LiveServer
from model_fixtures import hf_greedy
from pagedllm.entrypoints.openai.serving_models import LoRAModulePath, parse_lora_module

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def served(tiny_llama_adapters):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    base, adapters = tiny_llama_adapters
    config = EngineConfig.from_kwargs(model=base, dtype="float32", kv_cache_memory=16 << 20, max_model_len=256,
                                      enable_lora=True, max_loras=2)
    engine = AsyncEngine.from_config(config)
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    modules = [parse_lora_module(f"attn={adapters['attn-r8'][0]}"),
               parse_lora_module(json.dumps({"name": "mlp", "path": adapters["mlp-r4"][0],
                                             "base_model_name": "tiny-base"}))]
    app = build_app(engine, ["tiny"], lora_modules=modules)
    mp.undo()
    live = LiveServer(app, engine)
    yield live, engine, adapters
    live.stop()  # and the engine


def _oracle_text(engine, oracle, ids, n):
    return engine.tokenizer.decode(hf_greedy(oracle, ids, n), skip_special_tokens=True)


def test_models_lists_adapters_with_their_parent(served):
    live, _, adapters = served
    client = openai.OpenAI(base_url=live.url, api_key="x", max_retries=0)
    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == ["tiny", "attn", "mlp"]
    assert cards["attn"].parent == "tiny" and cards["attn"].root == adapters["attn-r8"][0]
    assert cards["mlp"].parent == "tiny-base" and cards["tiny"].parent is None
    assert client.models.retrieve("attn").parent == "tiny"


def test_sdk_selects_adapters_by_name(served):
    live, engine, adapters = served
    client = openai.OpenAI(base_url=live.url, api_key="x", max_retries=0)
    ids = engine.tokenizer.encode(PROMPT)
    texts = {}
    for name, key in (("attn", "attn-r8"), ("mlp", "mlp-r4")):
        r = client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.model == name
        texts[name] = r.choices[0].text
        assert texts[name] == _oracle_text(engine, adapters[key][1], ids, 10)
    base = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len({base, *texts.values()}) == 3
    chat = [{"role": "user", "content": "Hi there"}]
    tok = engine.tokenizer
    chat_ids = tok.encode(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)
    r = client.chat.completions.create(model="mlp", messages=chat, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == _oracle_text(engine, adapters["mlp-r4"][1], chat_ids, 8)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)


def test_runtime_load_and_unload(served):
    live, engine, adapters = served
    client = openai.OpenAI(base_url=live.url, api_key="x", max_retries=0)
    r = requests.post(live.base + "/v1/load_lora_adapter",
                      json={"lora_name": "all", "lora_path": adapters["all-r16"][0]})
    assert r.status_code == 200 and "all" in r.text
    again = requests.post(live.base + "/v1/load_lora_adapter", json={"lora_name": "all", "lora_path": "/x"})
    assert again.status_code == 400 and "already" in again.json()["error"]["message"]
    out = client.completions.create(model="all", prompt=PROMPT, max_tokens=8, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == _oracle_text(engine, adapters["all-r16"][1], engine.tokenizer.encode(PROMPT), 8)
    assert "all" in [m.id for m in client.models.list().data]
    bad = requests.post(live.base + "/v1/load_lora_adapter", json={"lora_name": "broken", "lora_path": "/nowhere"})
    assert bad.status_code == 400 and "'broken'" in bad.json()["error"]["message"]
    assert requests.post(live.base + "/v1/unload_lora_adapter", json={"lora_name": "all"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="all", prompt=PROMPT, max_tokens=2)
    gone = requests.post(live.base + "/v1/unload_lora_adapter", json={"lora_name": "all"})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError"
    # the other adapters and the base model still answer
    assert client.completions.create(model="attn", prompt=PROMPT, max_tokens=2).choices[0].text is not None


def test_remote_adapters_select_a_served_adapter_by_name(served):
    from pagedllm.integrations.langchain import VLLM

    live, engine, adapters = served
    llm = VLLM(model="tiny", base_url=live.url, temperature=0, max_new_tokens=8, ignore_eos=True)
    text = llm.invoke(PROMPT, lora_request="attn")
    assert text == _oracle_text(engine, adapters["attn-r8"][1], engine.tokenizer.encode(PROMPT), 8)


def test_runtime_routes_need_the_flag(served, monkeypatch):
    from fastapi.testclient import TestClient

    from pagedllm.entrypoints.openai.api_server import build_app

    _, engine, _ = served
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    with TestClient(build_app(engine, ["tiny"])) as http:
        assert http.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"}).status_code == 404


def test_bad_lora_modules_stop_the_start(served, tmp_path):
    from pagedllm.entrypoints.openai.api_server import build_app

    _, engine, _ = served
    with pytest.raises(ValueError, match="'ghost'.*no such folder"):
        build_app(engine, ["tiny"], lora_modules=[LoRAModulePath("ghost", str(tmp_path / "nowhere"))])


def test_lora_modules_flag_forms_and_errors():
    from pagedllm.entrypoints.cli import build_parser

    args = build_parser().parse_args(["serve", "m", "--enable-lora", "--lora-modules", "a=/p/a",
                                      '{"name": "b", "path": "/p/b", "base_model_name": "m"}'])
    assert args.lora_modules == [LoRAModulePath("a", "/p/a"), LoRAModulePath("b", "/p/b", "m")]
    with pytest.raises(ValueError, match="--lora-modules 'a'"):
        parse_lora_module("a")


def test_serve_refuses_lora_modules_without_enable_lora(capsys):
    from pagedllm.entrypoints.cli import main

    assert main(["serve", "some/model", "--lora-modules", "a=/p/a"]) == 2
    assert "--lora-modules needs --enable-lora" in capsys.readouterr().err
