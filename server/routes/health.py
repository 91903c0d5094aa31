"""/healthz (the process answers) and /readyz (every dependency answers; without Redis the platform works on,
degraded: rate limits per process, memory from the database, no exact-match cache)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import ServicesDep
from server.schemas import Health, Readiness

router = APIRouter(tags=["health"])

# What the platform does without a dependency it can work on without.
DEGRADABLE = {"redis": "rate limits per process, memory from the database, no exact-match cache"}


@router.get("/healthz")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    responses={
        200: {"description": "Every dependency answers (status ok), or all but Redis (status degraded)."},
        503: {"model": Readiness, "description": "Some dependency does not answer: its check says why."},
    },
)
async def readyz(services: ServicesDep, response: Response) -> Readiness:
    checks = await services.readiness()
    failing = {name for name, state in checks.items() if state != "ok"}
    if failing - set(DEGRADABLE):
        response.status_code = 503
        return Readiness(status="unavailable", checks=checks)
    if failing:
        checks = {
            name: f"{state} (degraded: {DEGRADABLE[name]})" if name in failing else state
            for name, state in checks.items()
        }
        return Readiness(status="degraded", checks=checks)
    return Readiness(status="ok", checks=checks)
