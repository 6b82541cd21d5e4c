"""vLLM's legacy API server (``python -m pagedllm.entrypoints.api_server``) for its ``/generate`` demo clients.

The route lives in ``openai/routes/generate.py`` and the OpenAI server mounts it, so this module
only starts that server: imports go one way, from here to ``openai/api_server.py``.
"""
from __future__ import annotations

from pagedllm.entrypoints.openai.api_server import main as serve_main
from pagedllm.entrypoints.openai.routes.generate import generate_router

__all__ = ["generate_router", "main"]


def main(argv: list[str] | None = None) -> int:
    """Serve ``/generate`` (plus the OpenAI routes: same app) for vLLM's legacy demo clients."""
    return serve_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
