"""Operations routes: ``/health`` (503 once an engine loop died), ``/version``, Prometheus ``/metrics``."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

import pagedllm
from pagedllm.entrypoints.openai.errors import error_response
from pagedllm.entrypoints.openai.protocol import APIError
from pagedllm.entrypoints.openai.served_models import ServedModels
from pagedllm.metrics import CONTENT_TYPE, Metrics


def admin_router(models: ServedModels, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health():
        dead = [m for m in models.models if not m.engine.healthy]
        if not dead:
            return Response(status_code=200)
        return error_response(APIError(f"the engine loop of {dead[0].names[0]!r} died: {dead[0].engine.dead_error!r}",
                                       status_code=503, type="ServiceUnavailableError"))

    @router.get("/version")
    async def version():
        return {"version": pagedllm.__version__}

    @router.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
