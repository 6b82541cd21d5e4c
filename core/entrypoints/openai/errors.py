"""Every server error as OpenAI's ``{"error": {"message", "type", "param", "code"}}``, FastAPI's own included."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.entrypoints.openai.protocol import APIError

logger = logging.getLogger(__name__)
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


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


def add_error_handlers(app: FastAPI) -> None:
    """APIError as is; validation 400, routing 404/405 and unhandled 500 in the same shape."""

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
