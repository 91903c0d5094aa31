"""GET /metrics: Prometheus text format (behind an admin key when ``GENAI_METRICS_REQUIRE_ADMIN``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.gateway.auth import require_admin
from server.gateway.prometheus_metrics import MetricsDep

router = APIRouter(tags=["observability"])


async def _authorized(request: Request) -> None:
    """Raises 401/403 unless the request may read metrics: anyone, or admin keys only when the setting says so."""
    if request.app.state.services.settings.metrics_require_admin:
        await require_admin(request)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, registry: MetricsDep) -> Response:
    await _authorized(request)
    body, content_type = registry.render()
    return Response(body, media_type=content_type)
