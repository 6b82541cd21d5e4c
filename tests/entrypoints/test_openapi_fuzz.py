"""Schema-driven fuzzing with schemathesis over the server's own ``/openapi.json`` (every documented operation,
valid and invalid bodies): no server error, every status, content type, header and JSON body as documented,
invalid bodies refused, the API key enforced. Bounded here; ``slow`` runs many more examples.

Checks left out, and why (docs/openapi.md): ``positive_data_acceptance`` (a
schema-valid body may still break a rule JSON Schema cannot state: a prompt longer than the context window,
token ids past the vocabulary, ``best_of`` < ``n``, a chat model asked for embeddings) and ``max_response_time``
(generation time is the work asked for)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import tiny_model_dir  # noqa: F401 - fixture
from schemathesis import checks
from schemathesis.generation import GenerationMode

from pagedllm.entrypoints.openai.openapi import ROUTES

API_KEY = "fuzz-key"
LORA_ROUTES = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}  # only with VLLM_ALLOW_RUNTIME_LORA_UPDATING
OPERATIONS = [(method.upper(), path) for path, method in ROUTES if path not in LORA_ROUTES]
WITH_BODY = [(m, p) for m, p in OPERATIONS if ROUTES[(p, m.lower())].request is not None]
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.negative_data_rejection,
          checks.ignored_auth, checks.unsupported_method, checks.missing_required_header]


@pytest.fixture(scope="module")
def schema(tiny_model_dir):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine
    from pagedllm.entrypoints.openai.api_server import build_app

    # max_model_len 64: whatever max_tokens a case asks for, a generation stays short
    engine = AsyncEngine.from_config(EngineConfig.from_kwargs(model=tiny_model_dir, dtype="float32",
                                                              kv_cache_memory=16 << 20, max_model_len=64, seed=0))
    app = build_app(engine, ["tiny"], api_key=API_KEY)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    engine.shutdown()


def _fuzz(schema, method: str, path: str, mode: str, examples: int) -> None:
    operation = schema[path][method]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=GenerationMode(mode)))
    def run(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS)

    run()


def test_every_route_is_documented(schema):
    documented = {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)  # a route missing from openapi.ROUTES (undocumented bodies) fails here
    chat = schema.raw_schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert {"200", "400", "401", "404", "413", "503"} <= set(chat["responses"])


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_valid_bodies(schema, method, path):
    _fuzz(schema, method, path, "positive", 12)


@pytest.mark.parametrize("method, path", WITH_BODY)
def test_invalid_bodies(schema, method, path):
    _fuzz(schema, method, path, "negative", 12)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method, path", WITH_BODY)
def test_many_bodies(schema, method, path, mode):
    _fuzz(schema, method, path, mode, 150)
