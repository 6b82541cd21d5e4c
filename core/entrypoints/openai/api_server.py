"""The OpenAI-compatible HTTP server: ``build_app(engine, ...)`` and ``main()``.

``pagedllm serve MODEL`` and ``python -m pagedllm.entrypoints.openai.api_server --model MODEL``
both end here. ``build_app`` assembles the route groups of ``routes/`` behind the error
handlers (``errors.py``) and the body-size / API-key guard (``guard.py``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from fastapi import FastAPI

import pagedllm
from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.cli_args import DEFAULT_MODEL, ArgumentParser, add_engine_args, engine_kwargs, parse_bytes
from pagedllm.entrypoints.openai.errors import add_error_handlers
from pagedllm.entrypoints.openai.guard import DEFAULT_MAX_BODY_BYTES, GuardMiddleware
from pagedllm.entrypoints.openai.routes.admin import admin_router
from pagedllm.entrypoints.openai.routes.generate import generate_router
from pagedllm.entrypoints.openai.routes.lora import lora_router
from pagedllm.entrypoints.openai.routes.openai_api import openai_router
from pagedllm.entrypoints.openai.routes.tokenize import tokenize_router
from pagedllm.entrypoints.openai.serving_chat import ServingChat
from pagedllm.entrypoints.openai.serving_models import (LoRAModulePath, parse_lora_module,
                                                        runtime_lora_updating_allowed)
from pagedllm.metrics import Metrics


def build_app(engine: AsyncEngine, served_model_names: list[str] | str | None = None, api_key: str | None = None,
              *, chat_template: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              lora_modules: list[LoRAModulePath] | None = None) -> FastAPI:
    """The FastAPI app over one AsyncEngine; ``served_model_names[0]`` is the name answered.

    ``lora_modules``: adapters clients select by name (``model=<name>``), read and checked here, so a
    bad one stops the start with a ValueError naming it."""
    if isinstance(served_model_names, str):
        served_model_names = [served_model_names]
    names = list(served_model_names or [engine.engine.config.model])
    app = FastAPI(title="pagedllm OpenAI-compatible server", version=pagedllm.__version__,
                  docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics = Metrics(engine, names[0])
    chat = ServingChat(engine, names, chat_template=chat_template)  # chat and tokenize share its template
    for module in lora_modules or ():
        chat.models.add_lora(module.name, module.path, module.base_model_name)
    add_error_handlers(app)
    app.include_router(openai_router(engine, names, chat))
    app.include_router(admin_router(engine, metrics))
    app.include_router(tokenize_router(engine, chat))
    app.include_router(generate_router())
    if runtime_lora_updating_allowed():
        app.include_router(lora_router(chat.models))
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


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
    srv.add_argument("--disable-log-requests", action="store_true", help="do not log each request")
    srv.add_argument("--uvicorn-log-level", default="warning", help="uvicorn's log level (default: %(default)s)")
    srv.add_argument("--max-request-body-bytes", type=parse_bytes, default=DEFAULT_MAX_BODY_BYTES,
                     help="larger request bodies get 413 (default: %(default)s)")
    srv.add_argument("--lora-modules", nargs="+", type=parse_lora_module, default=None, metavar="NAME=PATH",
                     help="LoRA adapters clients select with model=NAME (with --enable-lora): name=path, or "
                          'JSON {"name": ..., "path": ..., "base_model_name": ...}')
    add_engine_args(parser, model_default=None,
                    model_help="model name, local folder or .gguf file (default: the bundled model)")
    return parser


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

    model = args.model or getattr(args, "model_tag", None) or DEFAULT_MODEL  # --model wins over MODEL
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chat_template = args.chat_template
    if chat_template and os.path.isfile(chat_template):
        with open(chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    names = args.served_model_name or [model]
    engine = None
    try:
        config = EngineConfig.from_kwargs(**engine_kwargs(args, model=model))
        if args.lora_modules and not config.enable_lora:
            raise ValueError("--lora-modules needs --enable-lora")
        engine = AsyncEngine.from_config(config, log_requests=not args.disable_log_requests)
        app = build_app(engine, names, args.api_key, chat_template=chat_template,
                        max_body_bytes=args.max_request_body_bytes, lora_modules=args.lora_modules)
    except (ValueError, TypeError, OSError) as exc:
        if engine is not None:
            engine.shutdown()
        print(f"pagedllm serve: cannot start: {exc}", file=sys.stderr)
        return 2
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
    parser = ArgumentParser(prog="python -m pagedllm.entrypoints.openai.api_server",
                                     description="OpenAI-compatible server (same as `pagedllm serve`).")
    add_serve_args(parser, positional_model=False)
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
