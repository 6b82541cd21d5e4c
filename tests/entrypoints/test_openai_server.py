"""The real openai SDK (sync and async), LangChain's ChatOpenAI and requests against a live server."""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
import requests
from live_server import server, tiny_model_dir  # noqa: F401 - fixtures
from model_fixtures import hf_greedy

CHAT = [{"role": "user", "content": "Tell me about paged attention."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def test_completion_greedy_usage_and_echo(client):
    r = client.completions.create(model="tiny", prompt="Hello, my name is", max_tokens=6, temperature=0)
    (choice,) = r.choices
    assert r.object == "text_completion" and r.model == "tiny"
    assert choice.finish_reason == "length" and choice.text
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6
    echoed = client.completions.create(model="tiny", prompt="Hello, my name is", max_tokens=6, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "Hello, my name is" + choice.text


def test_served_greedy_text_equals_transformers(client, tiny_model_dir):  # noqa: F811 - fixture
    """Oracle: Hugging Face generate on the same weights, for a completion and a chat turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    r = client.completions.create(model="tiny", prompt="Hello, my name is", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    expected = hf_greedy(hf, tok.encode("Hello, my name is"), 6)
    assert r.choices[0].text == tok.decode(expected, skip_special_tokens=True)
    chat = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True})
    ids = tok.encode(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    assert chat.choices[0].message.content == tok.decode(hf_greedy(hf, ids, 6), skip_special_tokens=True)


def test_completion_batch_of_prompts_and_token_ids(client, server):
    ids = server.engine.tokenizer.encode("The capital of France is")
    r = client.completions.create(model="tiny", prompt=["Hello, my name is", "The capital of France is"],
                                  max_tokens=4, temperature=0)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[1].text == by_ids.choices[0].text


def test_chat_stream_deltas_concatenate_to_greedy_text(client):
    full = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert full.choices[0].message.role == "assistant" and full.object == "chat.completion"
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_done(server):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 3, "stream": True}
    with requests.post(server.url + "/chat/completions", json=body, stream=True, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == b"data: [DONE]"
    assert all(ln.startswith(b"data: ") for ln in lines)
    assert "usage" not in json.loads(lines[-2][6:]) or json.loads(lines[-2][6:])["usage"] is None


def test_n2_and_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, temperature=1.0, n=2, seed=1,
                                       logprobs=True, top_logprobs=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        content = c.logprobs.content
        assert len(content) == 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert r.usage.completion_tokens == 10
    cmpl = client.completions.create(model="tiny", prompt="Hi there", max_tokens=4, temperature=0, logprobs=3)
    lp = cmpl.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.token_logprobs) == 4 and all(len(t) >= 1 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and all(v <= 0 for v in lp.token_logprobs)


def test_best_of_returns_n_whole_choices(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=1.0, n=2, best_of=3,
                                  seed=3, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.text and c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 10


def test_stop_string_and_seed(client):
    base = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    words = base.choices[0].text.split()
    assert len(words) >= 3, base.choices[0].text  # deterministic greedy text: never silently skipped
    stopped = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0,
                                        stop=[words[2]])
    assert stopped.choices[0].finish_reason == "stop" and words[2] not in stopped.choices[0].text
    a, b = (client.completions.create(model="tiny", prompt="Seeded", max_tokens=8, temperature=1.0, seed=7)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


def test_async_client_chat_and_stream(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        full = await client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
        stream = await client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0,
                                                 stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        plain = await client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0)
        await client.close()
        return full, text, plain

    full, text, plain = asyncio.run(main())
    assert full.choices[0].message.content
    assert text == plain.choices[0].text


def test_models_health_version_tokenize(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert requests.get(server.base + "/health", timeout=10).status_code == 200
    assert requests.get(server.base + "/version", timeout=10).json()["version"]
    tok = requests.post(server.base + "/tokenize", json={"prompt": "Hello world"}, timeout=10).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    detok = requests.post(server.base + "/detokenize", json={"tokens": tok["tokens"]}, timeout=10).json()
    assert detok["prompt"] == "Hello world"
    chat_tok = requests.post(server.base + "/tokenize", json={"messages": CHAT}, timeout=10).json()
    assert chat_tok["count"] > tok["count"]


def test_langchain_chat_openai(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url, api_key="unused", model="tiny", temperature=0, max_tokens=6,
                     max_retries=0)
    reply = llm.invoke("Hello!")
    assert isinstance(reply.content, str) and reply.content
    streamed = "".join(chunk.content for chunk in llm.stream("Hello!"))
    assert streamed == reply.content


def test_legacy_generate(server):
    r = requests.post(server.base + "/generate", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0},
                      timeout=60)
    assert r.status_code == 200
    (text,) = r.json()["text"]
    assert text.startswith("Hello") and len(text) > len("Hello")
    with requests.post(server.base + "/generate", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0,
                                                        "stream": True}, stream=True, timeout=60) as s:
        lines = [json.loads(ln) for ln in s.iter_lines() if ln]
    assert lines[-1]["text"] == [text] and len(lines) >= 2


def test_unknown_model_embeddings_and_tools_are_clear_errors(client, server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as exc:  # a generation model asked for embeddings: its runner
        client.embeddings.create(model="tiny", input="hello")
    assert "runner='generate'" in exc.value.body["message"] and exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as exc:  # tools default to "auto", which needs a parser flag
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert exc.value.body["param"] == "tool_choice" and "--tool-call-parser" in exc.value.body["message"]
    r = requests.get(server.base + "/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
