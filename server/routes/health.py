"""/healthz (the process answers) and /readyz (every dependency answers)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import ServicesDep
from server.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    responses={
        200: {"description": "Every dependency answers."},
        503: {"model": Readiness, "description": "Some dependency does not answer: its check says why."},
    },
)
async def readyz(services: ServicesDep, response: Response) -> Readiness:
    checks = await services.readiness()
    ready = all(state == "ok" for state in checks.values())
    if not ready:
        response.status_code = 503
    return Readiness(status="ok" if ready else "unavailable", checks=checks)
