"""LangChain ``VLLM`` / ``ChatVLLM`` and LlamaIndex ``Vllm`` take ``lora_request`` per call (a LoRARequest or
the name of a loaded adapter) or as a field; outputs equal PEFT's merged model."""
import asyncio

import pytest

from model_fixtures import hf_greedy
from pagedllm import LoRARequest

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def setup(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    engine_kwargs = {"enable_lora": True, "max_loras": 2, "kv_cache_memory": 16 << 20, "max_model_len": 256}
    loras = {"attn": LoRARequest("attn", 1, adapters["attn-r8"][0]),
             "mlp": LoRARequest("mlp", 2, adapters["mlp-r4"][0])}
    return base, adapters, engine_kwargs, loras


def _expected(tok, oracle, ids, n=8):
    return tok.decode(hf_greedy(oracle, ids, n), skip_special_tokens=True)


def test_langchain_vllm_per_call_and_field(setup):
    from pagedllm.integrations.langchain import VLLM

    base, adapters, engine_kwargs, loras = setup
    llm = VLLM(model=base, dtype="float32", vllm_kwargs=engine_kwargs, temperature=0, max_new_tokens=8,
               ignore_eos=True)
    tok = llm.provider.engine.tokenizer
    ids = tok.encode(PROMPT)
    want = _expected(tok, adapters["attn-r8"][1], ids)
    assert llm.invoke(PROMPT, lora_request=loras["attn"]) == want
    assert llm.invoke(PROMPT, lora_request="attn") == want  # the name of an adapter the engine has loaded
    assert asyncio.run(llm.ainvoke(PROMPT, lora_request=loras["attn"])) == want
    assert "".join(llm.stream(PROMPT, lora_request=loras["attn"])) == want
    base_text = llm.invoke(PROMPT)
    assert base_text != want
    pinned = VLLM(model=base, dtype="float32", vllm_kwargs=engine_kwargs, temperature=0, max_new_tokens=8,
                  ignore_eos=True, lora_request=loras["mlp"])
    assert pinned.invoke(PROMPT) == _expected(tok, adapters["mlp-r4"][1], ids)
    results = pinned.generate([PROMPT, PROMPT], lora_request=loras["attn"])  # the call's keyword wins
    assert [g[0].text for g in results.generations] == [want, want]
    with pytest.raises(ValueError, match="'nope': no adapter of that name"):
        llm.invoke(PROMPT, lora_request="nope")


def test_langchain_chat_vllm_per_call(setup):
    from pagedllm.integrations.langchain import ChatVLLM

    base, adapters, engine_kwargs, loras = setup
    chat = ChatVLLM(model=base, dtype="float32", vllm_kwargs=engine_kwargs, temperature=0, max_tokens=8)
    tok = chat.provider.engine.tokenizer
    ids = tok.encode(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    oracle = hf_greedy(adapters["mlp-r4"][1], ids, 8, eos_token_id=list(chat.provider.engine.engine.eos_token_ids))
    want = tok.decode(oracle, skip_special_tokens=True)
    assert chat.invoke(CHAT, lora_request=loras["mlp"]).content == want
    assert "".join(c.content for c in chat.stream(CHAT, lora_request=loras["mlp"])) == want
    assert asyncio.run(chat.ainvoke(CHAT, lora_request="mlp")).content == want


def test_llama_index_vllm_per_call(setup):
    from llama_index.core.llms import ChatMessage

    from pagedllm.integrations.llama_index import Vllm

    base, adapters, engine_kwargs, loras = setup
    llm = Vllm(model=base, dtype="float32", vllm_kwargs=engine_kwargs, temperature=0, max_new_tokens=8,
               ignore_eos=True, use_chat_template=False)
    tok = llm.provider.engine.tokenizer
    want = _expected(tok, adapters["attn-r8"][1], tok.encode(PROMPT))
    assert llm.complete(PROMPT, lora_request=loras["attn"]).text == want
    assert asyncio.run(llm.acomplete(PROMPT, lora_request="attn")).text == want
    assert llm.complete(PROMPT).text != want
    reply = llm.chat([ChatMessage(role="user", content="Hi there")], lora_request=loras["mlp"])
    ids = tok.encode(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    assert reply.message.content == _expected(tok, adapters["mlp-r4"][1], ids)
    with pytest.raises(TypeError, match="lora_request must be a LoRARequest or an adapter name"):
        llm.complete(PROMPT, lora_request=3)
