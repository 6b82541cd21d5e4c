"""Pure ASGI guard in front of every route: the request-body limit (413) and ``--api-key`` (401)."""
from __future__ import annotations

import hmac

from pagedllm.entrypoints.openai.errors import error_response
from pagedllm.entrypoints.openai.protocol import APIError

DEFAULT_MAX_BODY_BYTES = 4 << 20  # ~1M tokens of text: far above any context, far below a DoS


class GuardMiddleware:
    """Rejects oversized bodies (413) and checks the API key on ``/v1/*`` and ``/generate``."""

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
