"""No silent typos in the adapters (issue 21): an unknown constructor argument of LangChain's ``VLLM`` /
``ChatVLLM`` or LlamaIndex's ``Vllm`` is a TypeError naming the accepted names, with a "did you mean";
the frameworks' own arguments (LangChain's ``callbacks``/``tags``, LlamaIndex's ``system_prompt``) still pass."""
from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.callbacks import StdOutCallbackHandler  # noqa: E402

from pagedllm.integrations.langchain import VLLM, ChatVLLM  # noqa: E402
from pagedllm.integrations.llama_index import Vllm  # noqa: E402


@pytest.mark.parametrize("cls,typo,meant", [
    (VLLM, "max_new_token", "max_new_tokens"),       # today: silently 512 tokens
    (Vllm, "max_new_token", "max_new_tokens"),
    (ChatVLLM, "max_token", "max_tokens"),
    (ChatVLLM, "temprature", "temperature"),
    (VLLM, "top_kk", "top_k"),
])
def test_an_unknown_constructor_argument_is_a_type_error_with_did_you_mean(cls, typo, meant):
    with pytest.raises(TypeError) as exc:
        cls(model="m", **{typo: 4})
    message = str(exc.value)
    assert repr(typo) in message and f"did you mean {meant!r}" in message
    accepted = message.split("accepted:", 1)[1]
    assert repr(meant) in accepted and "'model'" in accepted


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(TypeError, match=r"unexpected VLLM argument 'zzz'; accepted: \["):
        VLLM(model="m", zzz=1)


def test_the_frameworks_own_arguments_still_pass():
    handler = StdOutCallbackHandler()
    llm = VLLM(model="m", max_new_tokens=8, callbacks=[handler], tags=["t"], verbose=False)
    assert (llm.max_new_tokens, llm.callbacks, llm.tags) == (8, [handler], ["t"])
    chat = ChatVLLM(model="m", max_tokens=8, rate_limiter=None, disable_streaming=False)
    assert chat.max_tokens == 8
    li = Vllm(model="m", max_new_tokens=4, system_prompt="be brief")
    assert (li.max_new_tokens, li.system_prompt) == (4, "be brief")


def test_saved_configs_round_trip():
    # LangChain's and LlamaIndex's own serialisation passes field names back in: still accepted
    chat = ChatVLLM(model="m", max_tokens=3)
    assert ChatVLLM.model_validate(chat.model_dump()).max_tokens == 3
    li = Vllm(model="m", max_new_tokens=5)
    assert Vllm.from_dict(li.to_dict()).max_new_tokens == 5
