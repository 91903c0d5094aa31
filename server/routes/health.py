"""/healthz (the process answers) and /readyz (every dependency answers; without Redis the platform works on,
degraded: rate limits per process, memory from the database, no exact-match cache; 503 draining once a SIGTERM
came, while the replica serves on until its load balancer takes it out)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import ServicesDep
from server.schemas import Health, Readiness

router = APIRouter(tags=["health"])

# What the platform does without a dependency it can work on without.
DEGRADABLE = {
    "redis": "rate limits per process, memory from the database, no exact-match cache",
    "chroma": "requests grounded in vector stores get 503, the semantic cache is skipped",
}


def _covered_deployments(checks: dict[str, str]) -> set[str]:
    """The failing deployments (``model:R deployment:D``) of routes that have another deployment answering."""

    def route(name: str) -> str | None:
        return name.split(" deployment:", 1)[0] if name.startswith("model:") and " deployment:" in name else None

    answering = {route(name) for name, state in checks.items() if state == "ok"} - {None}
    return {name for name, state in checks.items() if state != "ok" and route(name) in answering}


@router.get("/healthz")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    responses={
        200: {"description": "Every dependency answers (status ok), or all but Redis or Chroma (status degraded)."},
        503: {
            "model": Readiness,
            "description": "Some dependency does not answer (its check says why), or the server is draining.",
        },
    },
)
async def readyz(services: ServicesDep, response: Response) -> Readiness:
    if services.drain.draining:  # stopping: a load balancer takes this replica out (server/drain.py)
        response.status_code = 503
        return Readiness(status="draining", checks={})
    checks = await services.readiness()
    failing = {name for name, state in checks.items() if state != "ok"}
    if failing - set(DEGRADABLE) - _covered_deployments(checks):
        response.status_code = 503
        return Readiness(status="unavailable", checks=checks)
    if failing:
        checks = {
            name: f"{state} (degraded: {DEGRADABLE.get(name, 'the route fails over to its other deployments')})"
            if name in failing
            else state
            for name, state in checks.items()
        }
        return Readiness(status="degraded", checks=checks)
    return Readiness(status="ok", checks=checks)
