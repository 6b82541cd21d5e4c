"""The OpenAI-compatible HTTP server: ``build_app(engine, ...)`` and ``main()``.

``pagedllm serve MODEL`` and ``python -m pagedllm.entrypoints.openai.api_server --model MODEL``
both end here. ``build_app`` assembles the route groups of ``routes/`` behind the error
handlers (``errors.py``) and the body-size / API-key guard (``guard.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import pagedllm
from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.cli_args import DEFAULT_MODEL, ArgumentParser, add_engine_args, engine_kwargs, parse_bytes
from pagedllm.entrypoints.openai.errors import add_error_handlers
from pagedllm.entrypoints.openai.guard import DEFAULT_MAX_BODY_BYTES, GuardMiddleware
from pagedllm.entrypoints.openai.openapi import install_openapi
from pagedllm.entrypoints.openai.routes.admin import admin_router
from pagedllm.entrypoints.openai.routes.generate import generate_router
from pagedllm.entrypoints.openai.routes.lora import lora_router
from pagedllm.entrypoints.openai.routes.openai_api import openai_router
from pagedllm.entrypoints.openai.routes.tokenize import tokenize_router
from pagedllm.entrypoints.openai.served_models import ServedModel, ServedModels
from pagedllm.entrypoints.openai.serving_chat import ServingChat
from pagedllm.entrypoints.openai.serving_completion import ServingCompletion
from pagedllm.entrypoints.openai.serving_embedding import ServingEmbedding
from pagedllm.entrypoints.openai.serving_models import (LoRAModulePath, parse_lora_module,
                                                        runtime_lora_updating_allowed)
from pagedllm.metrics import Metrics
from pagedllm.tool_parsers import get_tool_parser, tool_parser_names




def build_app(engine: AsyncEngine, served_model_names: list[str] | str | None = None, api_key: str | None = None,
              *, chat_template: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              also: list[tuple[AsyncEngine, list[str]]] = (),
              lora_modules: list[LoRAModulePath] | None = None, cors: dict | None = None,
              tool_call_parser: str | None = None, request_timeout: float | None = None) -> FastAPI:
    """The FastAPI app over one AsyncEngine (``served_model_names[0]`` is the name answered), plus the
    engines of ``also`` (``serve --also``), each routed by the request's ``model``.

    ``lora_modules``: adapters of the main engine that clients select by name (``model=<name>``), read
    and checked here, so a bad one stops the start with a ValueError naming it. ``tool_call_parser``: the
    registered parser that reads ``tool_choice="auto"`` answers (vLLM's ``--enable-auto-tool-choice
    --tool-call-parser``); None refuses ``auto``. ``request_timeout``: seconds a request may generate before it
    is stopped with a 408 (None: no bound)."""
    if isinstance(served_model_names, str):
        served_model_names = [served_model_names]
    names = list(served_model_names or [engine.engine.config.model])
    app = FastAPI(title="pagedllm OpenAI-compatible server", version=pagedllm.__version__,
                  docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    models = ServedModels([served_model(engine, names, chat_template, tool_call_parser)] +
                          [served_model(e, list(n)) for e, n in also])
    app.state.models = models
    for served in models.models:
        for handler in (served.chat, served.completions, served.embeddings):
            if handler is not None:
                handler.request_timeout = request_timeout
    app.state.metrics = metrics = Metrics(engine, names[0])
    for extra in models.models[1:]:
        metrics.add_model(extra.engine, extra.names[0])
    main = models.main
    for module in lora_modules or ():
        main.chat.models.add_lora(module.name, module.path, module.base_model_name)
    add_error_handlers(app)
    install_openapi(app)
    app.include_router(openai_router(models))
    app.include_router(admin_router(models, metrics))
    app.include_router(tokenize_router(models))
    app.include_router(generate_router())
    if runtime_lora_updating_allowed() and models.main.chat is not None:
        app.include_router(lora_router(models.main.chat.models))
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    # outermost, as vLLM's: a browser's preflight OPTIONS is answered before the API-key check
    app.add_middleware(CORSMiddleware, **(cors or cors_settings()))
    return app


def cors_settings(origins=("*",), credentials: bool = False, methods=("*",), headers=("*",)) -> dict:
    """CORSMiddleware's arguments from vLLM's ``--allowed-*`` flags (its defaults: every origin, method
    and header, no credentials)."""
    return {"allow_origins": list(origins), "allow_credentials": credentials, "allow_methods": list(methods),
            "allow_headers": list(headers)}


def served_model(engine: AsyncEngine, names: list[str], chat_template: str | None = None,
                 tool_call_parser: str | None = None) -> ServedModel:
    """An engine with the handlers its runner serves: chat and completions, or embeddings."""
    if engine.engine.runner_type == "pooling":
        return ServedModel(engine, names, embeddings=ServingEmbedding(engine, names))
    # chat and tokenize share its template
    chat = ServingChat(engine, names, chat_template=chat_template, tool_call_parser=tool_call_parser)
    completions = ServingCompletion(engine, names)
    completions.models = chat.models  # one set of names (base + LoRA adapters) for both handlers
    return ServedModel(engine, names, chat=chat, completions=completions)


# ---- command line ----------------------------------------------------------------------------
def add_serve_args(parser: argparse.ArgumentParser, *, positional_model: bool) -> argparse.ArgumentParser:
    """vLLM's ``serve`` flags: the server's own, then one per EngineConfig field (``cli_args``)."""
    if positional_model:
        parser.add_argument("model_tag", nargs="?", default=None, metavar="model",
                            help="model name, local folder or .gguf file (default: the bundled model)")
    srv = parser.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default: %(default)s; use 0.0.0.0 to accept other machines)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    srv.add_argument("--api-key", default=os.environ.get("PAGEDLLM_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1/* and /generate (env PAGEDLLM_API_KEY)")
    srv.add_argument("--chat-template", default=None, help="a Jinja chat template: a file path or the template")
    srv.add_argument("--enable-auto-tool-choice", action="store_true",
                     help='let the model decide when to call tools (tool_choice "auto", the default with tools); '
                          "needs --tool-call-parser")
    srv.add_argument("--tool-call-parser", default=None, metavar="NAME",
                     help="how tool calls are read out of the model's answers: " + ", ".join(tool_parser_names()) +
                          " (plugins add more through the register_tool_parsers hook)")
    srv.add_argument("--request-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                     help="stop a request that generates longer than this (408, or an error event in a stream; its "
                          "KV blocks are freed); default: no bound")
    srv.add_argument("--disable-log-requests", action="store_true", help="do not log each request")
    srv.add_argument("--uvicorn-log-level", default="warning", help="uvicorn's log level (default: %(default)s)")
    srv.add_argument("--max-request-body-bytes", type=parse_bytes, default=DEFAULT_MAX_BODY_BYTES,
                     help="larger request bodies get 413 (default: %(default)s)")
    for name, default, what in (("origins", ["*"], "origins"), ("methods", ["*"], "methods"),
                                ("headers", ["*"], "request headers")):
        srv.add_argument(f"--allowed-{name}", type=json_list, default=default, metavar="JSON",
                         help=f"CORS: allowed {what}, a JSON list (default: %(default)s, vLLM's)")
    srv.add_argument("--allowed-credentials", action="store_true", help="CORS: allow credentials (cookies)")
    srv.add_argument("--ssl-keyfile", default=None, help="serve HTTPS with this private key (PEM)")
    srv.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate chain (PEM)")
    srv.add_argument("--also", action="append", default=[], metavar="MODEL[=NAME]",
                     help="serve another model from the same server, in its own engine, routed by the request's "
                          "`model` (e.g. an embedding model beside the chat model); repeatable. It takes the "
                          "engine flags --device, --dtype, --seed, --download-dir and --trust-remote-code, its "
                          "other engine arguments are defaults. NAME (default: MODEL) is what clients send")
    srv.add_argument("--data-parallel-size", "-dp", type=positive_int, default=1, metavar="N",
                     help="serve N independent engines behind one endpoint, as Ray Serve replicas (pagedllm[ray]) "
                          "on the cluster of RAY_ADDRESS or a local Ray; each replica reserves one CPU (GPU) per "
                          "tensor-parallel rank; responses name their replica in the x-pagedllm-replica header "
                          "(default: %(default)s, one engine in this process)")
    srv.add_argument("--lora-modules", nargs="+", type=parse_lora_module, default=None, metavar="NAME=PATH",
                     help="LoRA adapters clients select with model=NAME (with --enable-lora): name=path, or "
                          'JSON {"name": ..., "path": ..., "base_model_name": ...}')
    add_engine_args(parser, model_default=None,
                    model_help="model name, local folder or .gguf file (default: the bundled model)")
    return parser


def ready_message(host: str, port: int, api_key: str | None, served: list[tuple[str, str]],
                  scheme: str = "http") -> str:
    """What to paste to try the server: one example per served model, ``served`` = (name, runner) pairs."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    base = f"{scheme}://{shown}:{port}"
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    key = repr(api_key) if api_key else '"EMPTY"'
    names = ", ".join(repr(name) for name, _ in served)
    lines = [f"\npagedllm is serving {names} at {base}/v1  (Ctrl+C stops it)\n"]
    for name, runner in served:
        if runner == "pooling":
            lines.append(f"  curl {base}/v1/embeddings -H 'Content-Type: application/json'{auth} \\\n"
                         f"    -d '{{\"model\": \"{name}\", \"input\": \"Hello!\"}}'\n")
        else:
            lines.append(f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
                         f"    -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": "
                         f"\"Hello!\"}}]}}'\n")
    name, runner = served[0]
    call = (f"c.embeddings.create(model=\"{name}\", input=\"Hello!\").data[0].embedding[:4]" if runner == "pooling"
            else f"c.chat.completions.create(model=\"{name}\", messages=[{{\"role\": \"user\", "
                 f"\"content\": \"Hello!\"}}]).choices[0].message.content")
    lines.append(f"  python -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}/v1\", api_key={key}); "
                 f"print({call})'\n")
    return "\n".join(lines)


def run_server(args: argparse.Namespace) -> int:
    """Build the engine from flags (bad flags fail here, before binding), then serve until Ctrl+C."""
    import uvicorn

    from pagedllm.config import EngineConfig
    from pagedllm.entrypoints.openai.server import GRACEFUL_SHUTDOWN_S, ServingServer

    model = args.model or getattr(args, "model_tag", None) or DEFAULT_MODEL  # --model wins over MODEL
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chat_template = read_chat_template(args.chat_template)
    problem = ssl_problem(args) or tool_flags_problem(args)
    if problem:
        print(f"pagedllm serve: cannot start: {problem}", file=sys.stderr)
        return 2
    if args.data_parallel_size > 1:
        from pagedllm.entrypoints.openai.ray_serve import run_data_parallel

        return run_data_parallel(args, model, chat_template)
    engines: list[AsyncEngine] = []
    try:
        config = EngineConfig.from_kwargs(**engine_kwargs(args, model=model))
        if args.lora_modules and not config.enable_lora:
            raise ValueError("--lora-modules needs --enable-lora")
        extra_configs = [(EngineConfig.from_kwargs(model=m, **_shared_engine_args(args)), n) for m, n in also_models(args)]
        for c in [config] + [c for c, _ in extra_configs]:
            engines.append(AsyncEngine.from_config(c, log_requests=not args.disable_log_requests))
    except (ValueError, TypeError, OSError) as exc:
        for e in engines:
            e.shutdown()
        print(f"pagedllm serve: cannot start: {exc}", file=sys.stderr)
        return 2
    engine = engines[0]
    names = args.served_model_name or [model]
    also = [(e, [name]) for e, (_, name) in zip(engines[1:], extra_configs)]
    try:
        app = build_app(engine, names, args.api_key, chat_template=chat_template,
                        max_body_bytes=args.max_request_body_bytes, also=also, lora_modules=args.lora_modules,
                        cors=cors_settings(args.allowed_origins, args.allowed_credentials, args.allowed_methods,
                                           args.allowed_headers),
                        tool_call_parser=args.tool_call_parser if args.enable_auto_tool_choice else None,
                        request_timeout=args.request_timeout)
    except ValueError as exc:  # two models under one name, a bad LoRA adapter
        for e in engines:
            e.shutdown()
        print(f"pagedllm serve: cannot start: {exc}", file=sys.stderr)
        return 2
    message = ready_message(args.host, args.port, args.api_key,
                            [(m.names[0], m.runner) for m in app.state.models.models],
                            "https" if args.ssl_certfile else "http")

    server = ServingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                                          timeout_keep_alive=30, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                                          ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile),
                           engines, message)
    # uvicorn handles SIGTERM/SIGINT itself (the graceful stop above), then raises the signal again for the
    # handler it found: the default one would kill the process (-15) after a clean stop; this one lets it exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped_by_signal)
    try:
        server.run()
    finally:
        for e in engines:
            e.shutdown()
        if server.started:
            logging.getLogger(__name__).info("stopped; KV blocks still held by requests: %d",
                                             sum(e.num_used_blocks() for e in engines))
    return server.exit_code if server.started else 1


def _stopped_by_signal(signum, frame) -> None:
    """The signal uvicorn re-raises after its graceful stop: nothing left to do."""


def read_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file's text, or the template itself."""
    if value and os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    return value


def ssl_problem(args: argparse.Namespace) -> str | None:
    """Why the HTTPS flags cannot work, checked before any engine loads; None when they can (or are unset)."""
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        return "--ssl-keyfile and --ssl-certfile go together (HTTPS needs both)"
    for flag, path in (("--ssl-keyfile", args.ssl_keyfile), ("--ssl-certfile", args.ssl_certfile)):
        if path and not os.path.isfile(path):
            return f"{flag} {path!r} is not a file"
    return None


def tool_flags_problem(args: argparse.Namespace) -> str | None:
    """Why the tool-calling flags cannot work (checked before any engine loads); None when they can."""
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        return f"--enable-auto-tool-choice needs --tool-call-parser (one of {', '.join(tool_parser_names())})"
    if args.tool_call_parser:
        try:
            get_tool_parser(args.tool_call_parser)
        except ValueError as exc:
            return f"--tool-call-parser: {exc}"
    return None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def json_list(text: str) -> list[str]:
    """``--allowed-origins '["https://a.example"]'``: a JSON list of strings, as vLLM's flags take."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"not a JSON list of strings: {text!r} (e.g. '[\"https://a.example\"]')")
    return value


def also_models(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--also MODEL[=NAME]`` flags -> (model, served name) pairs."""
    pairs = []
    for value in getattr(args, "also", None) or []:
        model, _, name = value.partition("=")
        if not model:
            raise ValueError(f"--also {value!r}: give a model (MODEL or MODEL=NAME)")
        pairs.append((model, name or model))
    return pairs


def _shared_engine_args(args: argparse.Namespace) -> dict:
    """The engine flags an --also model shares with the main one (where and how it runs, not its sizes)."""
    return {k: getattr(args, k) for k in ("device", "dtype", "seed", "download_dir", "trust_remote_code")
            if hasattr(args, k)}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m pagedllm.entrypoints.openai.api_server",
                                     description="OpenAI-compatible server (same as `pagedllm serve`).")
    add_serve_args(parser, positional_model=False)
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
