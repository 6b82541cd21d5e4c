"""``/openapi.json`` with every route's request and response bodies, errors included.

The routes read their raw bodies themselves (``routes/http_io.parse``: one OpenAI-shaped 400 for bad
JSON, bad UTF-8 and wrong types, never FastAPI's 422), so FastAPI cannot see the models; this table
tells the schema what each route takes and answers, from the same pydantic models the routes use.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pagedllm.entrypoints.openai import protocol as p

JSON, SSE, NDJSON, TEXT = "application/json", "text/event-stream", "application/x-ndjson", "text/plain"
ERRORS = {
    400: "invalid request: the message names the field (`param`)",
    401: "missing or wrong API key (`--api-key`)",
    404: "no served model of that name",
    408: "generated longer than `--request-timeout`",
    413: "request body larger than `--max-request-body-bytes`",
    503: "overloaded (`--max-waiting-requests`, with Retry-After) or the engine loop died",
}
V1_ERRORS = (400, 401, 404, 408, 413, 503)


class Route:
    """One operation: its request model, its answer as (content type, model or None for text) per status."""

    def __init__(self, request: type[BaseModel] | None, ok: dict[str, type[BaseModel] | None],
                 errors: tuple[int, ...] = V1_ERRORS, summary: str = ""):
        self.request, self.ok, self.errors, self.summary = request, ok, errors, summary


ROUTES: dict[tuple[str, str], Route] = {
    ("/v1/completions", "post"): Route(p.CompletionRequest, {JSON: p.CompletionResponse, SSE: None},
                                       summary="Create a completion (OpenAI); stream=true answers server-sent events"),
    ("/v1/chat/completions", "post"): Route(p.ChatCompletionRequest, {JSON: p.ChatCompletionResponse, SSE: None},
                                            summary="Create a chat completion (OpenAI), tool calls included"),
    ("/v1/embeddings", "post"): Route(p.EmbeddingRequest, {JSON: p.EmbeddingResponse},
                                      summary="Create embeddings (OpenAI) with an embedding model"),
    ("/pooling", "post"): Route(p.PoolingRequest, {JSON: p.PoolingResponse},
                                summary="vLLM's pooling: the pooled vectors of an embedding model"),
    ("/v1/models", "get"): Route(None, {JSON: p.ModelList}, (401,), summary="List the served models"),
    ("/v1/models/{model_id}", "get"): Route(None, {JSON: p.ModelCard}, (401, 404), summary="One served model"),
    ("/tokenize", "post"): Route(p.TokenizeRequest, {JSON: p.TokenizeResponse}, (400, 404, 413),
                                 summary="vLLM's tokenize: a prompt or chat messages to token ids"),
    ("/detokenize", "post"): Route(p.DetokenizeRequest, {JSON: p.DetokenizeResponse}, (400, 404, 413),
                                   summary="vLLM's detokenize: token ids to text"),
    ("/generate", "post"): Route(p.GenerateRequest, {JSON: p.GenerateResponse, NDJSON: None}, (400, 401, 413, 503),
                                 summary="vLLM's legacy generate: prompt + SamplingParams fields"),
    ("/v1/load_lora_adapter", "post"): Route(p.LoadLoRAAdapterRequest, {TEXT: None}, (400, 401, 413),
                                             summary="Load a LoRA adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING)"),
    ("/v1/unload_lora_adapter", "post"): Route(p.UnloadLoRAAdapterRequest, {TEXT: None}, (400, 401, 404, 413),
                                               summary="Unload a LoRA adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING)"),
    ("/health", "get"): Route(None, {}, (503,), summary="200 while the engine loop runs, 503 once it died"),
    ("/version", "get"): Route(None, {JSON: p.VersionResponse}, (), summary="The pagedllm version"),
    ("/metrics", "get"): Route(None, {TEXT: None}, (), summary="Prometheus metrics (vLLM's names, pagedllm: prefix)"),
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (``/openapi.json``, ``/docs``) document the bodies of ``ROUTES``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(get_openapi(title=app.title, version=app.version, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi


def document(schema: dict[str, Any]) -> dict[str, Any]:
    requests = {r.request for r in ROUTES.values() if r.request is not None}
    responses = {m for r in ROUTES.values() for m in r.ok.values() if m is not None} | {p.ErrorResponse}
    keys, defs = models_json_schema([(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
                                    ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    for (path, method), route in ROUTES.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:  # a route this app does not have (the LoRA ones without the variable)
            continue
        operation["summary"] = route.summary or operation.get("summary", "")
        if route.request is not None:
            operation["requestBody"] = {"required": True, "content": {
                JSON: {"schema": keys[(route.request, "validation")]}}}
        operation["responses"] = {"200": {"description": "OK", "content": {
            kind: {"schema": keys[(model, "serialization")] if model else {"type": "string"}}
            for kind, model in route.ok.items()}}}
        error = {JSON: {"schema": keys[(p.ErrorResponse, "serialization")]}}
        for status in route.errors:
            operation["responses"][str(status)] = {"description": ERRORS[status], "content": error}
    return schema
