"""Every remote provider reaches a key-protected server: with ``api_key=`` and with ``$OPENAI_API_KEY`` (issue #21.5).

Before this, LlamaIndex ``Vllm(api_url=..., api_key=...)`` dropped the key and every remote provider sent
"EMPTY" when only ``OPENAI_API_KEY`` was set: the server answered 401."""
from __future__ import annotations


import openai
import pytest

from live_server import start_server, tiny_model_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # builds one engine
KEY = "s3cret"


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir):
    live = start_server(tiny_model_dir, api_key=KEY)
    yield live
    live.stop()


def llama_index(url, **key):
    from pagedllm.integrations.llama_index import Vllm

    return lambda: Vllm(model="tiny", api_url=url, max_new_tokens=2, temperature=0, **key).complete("hi").text


def langchain_llm(url, **key):
    from pagedllm.integrations.langchain import VLLM

    return lambda: VLLM(model="tiny", base_url=url, max_new_tokens=2, temperature=0, **key).invoke("hi")


def langchain_chat(url, **key):
    from pagedllm.integrations.langchain import ChatVLLM

    return lambda: ChatVLLM(model="tiny", base_url=url, max_tokens=2, temperature=0, **key).invoke("hi").content


def provider(url, **key):
    from pagedllm.provider import get_provider
    from pagedllm.sampling_params import SamplingParams

    return lambda: get_provider("tiny", base_url=url, **key).generate("hi", SamplingParams(max_tokens=2)).texts[0]


PROVIDERS = {"llama_index.Vllm": (llama_index, "base"), "langchain.VLLM": (langchain_llm, "url"),
             "langchain.ChatVLLM": (langchain_chat, "url"), "provider.get_provider": (provider, "url")}


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("how", ["api_key", "OPENAI_API_KEY"])
def test_remote_provider_sends_the_key(name, how, keyed_server, monkeypatch):
    make, url_attr = PROVIDERS[name]
    url = getattr(keyed_server, url_attr)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if how == "api_key":
        call = make(url, api_key=KEY)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        call = make(url)
    assert isinstance(call(), str)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_wrong_key_is_still_refused(name, keyed_server, monkeypatch):
    """The check above can fail: without the right key the same call is a 401."""
    make, url_attr = PROVIDERS[name]
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with pytest.raises(openai.AuthenticationError):
        make(getattr(keyed_server, url_attr))()


@pytest.mark.parametrize("how", ["--api-key", "OPENAI_API_KEY"])
def test_bench_serve_sends_the_key(how, keyed_server, monkeypatch):
    """`pagedllm bench serve` is a remote client too: --api-key, else $OPENAI_API_KEY (it sent "EMPTY")."""
    import argparse
    import asyncio

    from pagedllm.benchmarks import serve as bench_serve
    from pagedllm.benchmarks.workload import SyntheticRequest

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = ["--base-url", keyed_server.url, "--concurrency", "1"]
    if how == "--api-key":
        argv += ["--api-key", KEY]
    else:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
    args = bench_serve.add_cli_args(argparse.ArgumentParser()).parse_args(argv)
    report = asyncio.run(bench_serve.run(args, [SyntheticRequest("hi", [1, 2, 3], 2)]))
    assert report["completed"] == 1 and report["errors"] == 0, report["first_errors"]
