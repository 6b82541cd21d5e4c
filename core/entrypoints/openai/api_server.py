"""The OpenAI-compatible HTTP server: ``build_app(engine, ...)`` and ``main()``.

``pagedllm serve MODEL`` and ``python -m pagedllm.entrypoints.openai.api_server --model MODEL``
both end here. Every error, including FastAPI's own validation and routing errors, leaves as
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import pagedllm
from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.api_server import generate_router
from pagedllm.entrypoints.cli_args import add_model_impl_arg
from pagedllm.entrypoints.openai.protocol import (APIError, ChatCompletionRequest, CompletionRequest,
                                                  DetokenizeRequest, TokenizeRequest)
from pagedllm.entrypoints.openai.serving_chat import ServingChat
from pagedllm.entrypoints.openai.serving_completion import ServingCompletion
from pagedllm.metrics import CONTENT_TYPE, Metrics

logger = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 4 << 20  # ~1M tokens of text: far above any context, far below a DoS


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code)


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """pydantic's error list as one 400 naming the first bad field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
                        param=None, code="invalid_json")
    param = _field_path(first.get("loc", ()))
    message = "; ".join(f"{_field_path(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5])
    return APIError(message, param=param)


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _field_path(loc) -> str | None:
    """``('prompt', 'list[int]', 0)`` -> ``prompt``: the request's field path without pydantic's union tags."""
    parts = []
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, int) or (isinstance(p, str) and p.isidentifier() and p not in _UNION_TAGS):
            parts.append(str(p))
        else:
            break
    return ".".join(parts) or None


async def parse(request: Request, model: type[BaseModel]):
    """Validate the raw body (bytes): bad JSON/UTF-8/types all become a 400, never FastAPI's 422."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def cancel_on_disconnect(request: Request, work):
    """Run ``work`` (after the body was read) but cancel it, aborting its engine requests, if the client leaves.

    Streaming answers return at once (StreamingResponse watches for disconnects itself); a
    non-streaming one generates here, so a client that times out must not leave it running.
    """
    task = asyncio.ensure_future(work)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    return task.result()


class _GuardMiddleware:
    """Pure ASGI: rejects oversized bodies (413) and checks the API key on ``/v1/*`` and ``/generate``."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.api_key is not None and (path.startswith("/v1") or path == "/generate"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            given = header[7:] if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.api_key):
                err = APIError("invalid or missing API key (send 'Authorization: Bearer <key>')",
                               status_code=401, type="AuthenticationError", code="invalid_api_key")
                return await error_response(err)(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_big = APIError(f"request body larger than {self.max_body_bytes} bytes", status_code=413,
                           type="RequestTooLargeError")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await error_response(too_big)(scope, receive, send)
        seen = 0

        async def limited_receive():  # chunked bodies carry no content-length: count as they come
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise APIError(too_big.message, status_code=413, type="RequestTooLargeError")
            return message

        return await self.app(scope, limited_receive, send)


def build_app(engine: AsyncEngine, served_model_names: list[str] | str | None = None, api_key: str | None = None,
              *, chat_template: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over one AsyncEngine; ``served_model_names[0]`` is the name answered."""
    if isinstance(served_model_names, str):
        served_model_names = [served_model_names]
    names = list(served_model_names or [engine.engine.config.model])
    app = FastAPI(title="pagedllm OpenAI-compatible server", version=pagedllm.__version__,
                  docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics = Metrics(engine, names[0])
    completions = ServingCompletion(engine, names)
    chat = ServingChat(engine, names, chat_template=chat_template)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code, "APIError")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(message, status_code=exc.status_code, type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(APIError(f"internal error: {type(exc).__name__}", status_code=500,
                                       type="InternalServerError"))

    def answer(result):
        if isinstance(result, Response):
            return result
        if isinstance(result, BaseModel):
            return JSONResponse(result.model_dump(mode="json"))
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def create_completion(request: Request):
        req = await parse(request, CompletionRequest)
        return answer(await cancel_on_disconnect(request, completions.create(req)))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        req = await parse(request, ChatCompletionRequest)
        return answer(await cancel_on_disconnect(request, chat.create(req)))

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "pagedllm", "root": engine.engine.config.model,
                 "parent": None, "max_model_len": engine.max_model_len} for name in names]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        chat.model_name(model_id)
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "pagedllm",
                "max_model_len": engine.max_model_len}

    @app.api_route("/v1/embeddings", methods=["POST"])
    async def embeddings():
        raise APIError("embeddings are not served yet by pagedllm (they come with their own issue)",
                       status_code=404, type="NotFoundError", code="not_implemented")

    @app.get("/health")
    async def health():
        if engine.healthy:
            return Response(status_code=200)
        return error_response(APIError(f"the engine loop died: {engine.dead_error!r}", status_code=503,
                                       type="ServiceUnavailableError"))

    @app.get("/version")
    async def version():
        return {"version": pagedllm.__version__}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = await parse(request, TokenizeRequest)
        chat.model_name(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError("send exactly one of `prompt` or `messages`", param="prompt")
        if req.messages is not None:
            ids = chat.render(req.messages, add_generation_prompt=req.add_generation_prompt is not False)
        else:
            ids = engine.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = await parse(request, DetokenizeRequest)
        chat.model_name(req.model)
        vocab = chat.vocab_size
        if any(t >= vocab for t in req.tokens):
            raise APIError(f"token ids must be in 0..{vocab - 1}", param="tokens")
        return {"prompt": engine.tokenizer.decode(req.tokens)}

    app.include_router(generate_router())
    app.add_middleware(_GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


# ---- command line ----------------------------------------------------------------------------
def parse_bytes(text: str) -> int:
    """``2147483648``, ``2G``, ``512MiB`` -> bytes (the KV-cache flag takes human sizes)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1] if s and s[-1] in units else ""
    try:
        return int(float(s[:-1] if unit else s) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2147483648, 2G, 512M)") from None


def add_serve_args(parser: argparse.ArgumentParser, *, positional_model: bool) -> argparse.ArgumentParser:
    """vLLM's ``serve`` flags; each maps to an EngineConfig field or a server option."""
    if positional_model:
        parser.add_argument("model", nargs="?", default=None, help="model name, local folder or .gguf file")
        parser.add_argument("--model", dest="model_flag", default=None, help=argparse.SUPPRESS)
    else:
        parser.add_argument("--model", default=None, help="model name, local folder or .gguf file")
    srv = parser.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default: %(default)s; use 0.0.0.0 to accept other machines)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    srv.add_argument("--served-model-name", nargs="+", default=None,
                     help="model name(s) clients send; the first is the one answered (default: the model)")
    srv.add_argument("--api-key", default=os.environ.get("PAGEDLLM_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1/* and /generate (env PAGEDLLM_API_KEY)")
    srv.add_argument("--chat-template", default=None, help="a Jinja chat template: a file path or the template")
    srv.add_argument("--disable-log-requests", action="store_true", help="do not log each request")
    srv.add_argument("--uvicorn-log-level", default="warning", help="uvicorn's log level (default: %(default)s)")
    srv.add_argument("--max-request-body-bytes", type=parse_bytes, default=DEFAULT_MAX_BODY_BYTES,
                     help="larger request bodies get 413 (default: %(default)s)")
    eng = parser.add_argument_group("engine")
    eng.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (default: %(default)s)")
    eng.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    eng.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the hub")
    add_model_impl_arg(eng)
    eng.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="tensor-parallel workers")
    eng.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="pipeline-parallel stages")
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                     help="fraction of GPU memory for weights + KV cache (default: %(default)s)")
    eng.add_argument("--kv-cache-memory", type=parse_bytes, default=None,
                     help="KV-cache size on CPU, bytes or 2G/512M (default: engine's)")
    eng.add_argument("--swap-space", type=float, default=4, help="CPU swap space in GiB (default: %(default)s)")
    eng.add_argument("--max-num-seqs", type=int, default=256, help="most sequences per step (default: %(default)s)")
    eng.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget of one step")
    eng.add_argument("--quantization", "-q", default=None, help="None or gguf (GGUF is dequantized at load)")
    eng.add_argument("--enforce-eager", action="store_true", help="never capture CUDA graphs")
    eng.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                     help="reuse KV blocks of shared prompt prefixes (default: on)")
    eng.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    eng.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    eng.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (default: %(default)s)")
    return parser


def serve_engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(dtype=args.dtype, max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code,
                tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
                gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_memory=args.kv_cache_memory,
                swap_space=args.swap_space, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, quantization=args.quantization,
                enforce_eager=args.enforce_eager, enable_prefix_caching=args.enable_prefix_caching,
                seed=args.seed, device=args.device, block_size=args.block_size,
                served_model_name=args.served_model_name, model_impl=args.model_impl)


def ready_message(host: str, port: int, model: str, api_key: str | None) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown}:{port}"
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    key = repr(api_key) if api_key else '"EMPTY"'
    return (f"\npagedllm is serving {model!r} at {base}/v1  (Ctrl+C stops it)\n\n"
            f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
            f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n\n"
            f"  python -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}/v1\", api_key={key}); "
            f"print(c.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", "
            f"\"content\": \"Hello!\"}}]).choices[0].message.content)'\n")


def run_server(args: argparse.Namespace) -> int:
    """Build the engine from flags (bad flags fail here, before binding), then serve until Ctrl+C."""
    import uvicorn

    from pagedllm.config import EngineConfig

    model = getattr(args, "model_flag", None) or args.model
    if not model:
        from pagedllm.entrypoints.cli_args import DEFAULT_MODEL
        model = DEFAULT_MODEL
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chat_template = args.chat_template
    if chat_template and os.path.isfile(chat_template):
        with open(chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    try:
        config = EngineConfig.from_kwargs(model=model, **serve_engine_kwargs(args))
        engine = AsyncEngine.from_config(config, log_requests=not args.disable_log_requests)
    except (ValueError, TypeError, OSError) as exc:
        print(f"pagedllm serve: cannot start: {exc}", file=sys.stderr)
        return 2
    names = args.served_model_name or [model]
    app = build_app(engine, names, args.api_key, chat_template=chat_template,
                    max_body_bytes=args.max_request_body_bytes)
    message = ready_message(args.host, args.port, names[0], args.api_key)

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(message, flush=True)

    server = _Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                                    timeout_keep_alive=30))
    try:
        server.run()
    finally:
        engine.shutdown()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagedllm.entrypoints.openai.api_server",
                                     description="OpenAI-compatible server (same as `pagedllm serve`).")
    add_serve_args(parser, positional_model=False)
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
