"""Operations routes: ``/health`` (503 once the engine loop died), ``/version``, Prometheus ``/metrics``."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

import pagedllm
from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.openai.errors import error_response
from pagedllm.entrypoints.openai.protocol import APIError
from pagedllm.metrics import CONTENT_TYPE, Metrics


def admin_router(engine: AsyncEngine, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health():
        if engine.healthy:
            return Response(status_code=200)
        return error_response(APIError(f"the engine loop died: {engine.dead_error!r}", status_code=503,
                                       type="ServiceUnavailableError"))

    @router.get("/version")
    async def version():
        return {"version": pagedllm.__version__}

    @router.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
