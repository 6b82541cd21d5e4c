"""The server's request and response models against OpenAI's published API, as the ``openai`` SDK (generated
from OpenAI's OpenAPI description) types it: every OpenAI request field is implemented or listed here as not
implemented (with why), and every response field the server sends is OpenAI's or a named vLLM extra."""
from __future__ import annotations

import typing

import pytest
from openai.types import Completion, CreateEmbeddingResponse, completion_create_params, embedding_create_params
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params as chat_params
from pydantic import BaseModel

from pagedllm.entrypoints.openai import protocol as p

NOT_IMPLEMENTED = {  # OpenAI chat fields with nothing to do on a local text model (ignored, and named in a header)
    "audio", "modalities", "prediction", "reasoning_effort", "verbosity", "web_search_options",  # other models
    "metadata", "store", "service_tier", "moderation", "safety_identifier",  # OpenAI's platform services
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",  # prefix caching is automatic here
    "function_call",  # the deprecated form of tool_choice; `functions` is refused with a pointer to `tools`
}
# vLLM's: the stop string or token id that ended a choice; an embeddings answer's id and created time
VLLM_EXTRAS = {"stop_reason", "id", "created"}


@pytest.mark.parametrize("theirs, ours", [
    (chat_params.CompletionCreateParamsBase, p.ChatCompletionRequest),
    (completion_create_params.CompletionCreateParamsBase, p.CompletionRequest),
    (embedding_create_params.EmbeddingCreateParams, p.EmbeddingRequest),
])
def test_every_openai_request_field_is_implemented_or_named(theirs, ours):
    missing = set(theirs.__annotations__) - set(ours.model_fields)
    assert missing <= NOT_IMPLEMENTED, sorted(missing - NOT_IMPLEMENTED)


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _field_names(ours: type[BaseModel], theirs: type[BaseModel], path: str = "") -> list[str]:
    """Our fields (recursively) that OpenAI's model lacks, as dotted paths."""
    extra = []
    for name, field in ours.model_fields.items():
        if name not in theirs.model_fields:
            extra.append(path + name)
            continue
        inner_ours, inner_theirs = _models_in(field.annotation), _models_in(theirs.model_fields[name].annotation)
        if inner_ours and inner_theirs:
            for sub in inner_ours:
                # OpenAI types a field as a union of variants (tool call kinds): compare with the closest one
                extra += min((_field_names(sub, t, f"{path}{name}.") for t in inner_theirs), key=len)
    return extra


@pytest.mark.parametrize("ours, theirs", [
    (p.ChatCompletionResponse, ChatCompletion), (p.ChatCompletionChunk, ChatCompletionChunk),
    (p.CompletionResponse, Completion), (p.EmbeddingResponse, CreateEmbeddingResponse),
])
def test_every_response_field_is_openai_or_a_vllm_extra(ours, theirs):
    extra = {name.rsplit(".", 1)[-1] for name in _field_names(ours, theirs)}
    assert extra <= VLLM_EXTRAS, sorted(extra - VLLM_EXTRAS)


def test_finish_reasons_are_openai_values():
    allowed = set(typing.get_args(ChatCompletion.model_fields["choices"].annotation.__args__[0]
                                  .model_fields["finish_reason"].annotation))
    assert {"stop", "length", "tool_calls"} <= allowed
