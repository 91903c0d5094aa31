"""/v1/fine_tuning/jobs: OpenAI's fine-tuning jobs API, and ``POST /v1/fine-tunes`` (the older name) for creating one.

A job belongs to the app whose key made it: another app's job id is a 404, and lists never show it. Creating a job
answers at once (``queued``, or ``failed`` with the file's problem); ``genai worker`` runs it, and its events and
checkpoints tell the progress.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request

from errors import InvalidRequest
from server.deps import AppCaller, ServicesDep
from server.fine_tuning_schemas import (
    CheckpointList,
    CheckpointObject,
    EventList,
    EventObject,
    JobCreate,
    JobList,
    JobObject,
)

router = APIRouter(prefix="/v1", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=64)]
METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")


@router.post("/fine_tuning/jobs")
async def create_job(body: JobCreate, caller: AppCaller, services: ServicesDep) -> JobObject:
    """Create a job: its files are validated at once, then it waits in the queue for a worker."""
    return JobObject.of(await services.fine_tuning.create(caller, body))


@router.post("/fine-tunes", include_in_schema=False)
async def create_job_legacy(body: JobCreate, caller: AppCaller, services: ServicesDep) -> JobObject:
    """The older name of ``POST /v1/fine_tuning/jobs``: the same request, the same job."""
    return await create_job(body, caller, services)


@router.get("/fine_tuning/jobs")
async def list_jobs(
    request: Request, caller: AppCaller, services: ServicesDep, limit: Limit = 20, after: Cursor = None
) -> JobList:
    """The app's jobs, newest first; ``metadata[key]=value`` filters."""
    metadata = {}
    for name, value in request.query_params.multi_items():
        if match := METADATA_PARAM.match(name):
            metadata[match.group(1)] = value
        elif name not in ("limit", "after"):
            raise InvalidRequest(f"Unknown query parameter '{name}'.", param=name, code="unsupported_parameter")
    page = await services.fine_tuning.list(caller.app_id, limit=limit, after=after, metadata=metadata or None)
    return JobList(data=[JobObject.of(job) for job in page.items], has_more=page.has_more)


@router.get("/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, caller: AppCaller, services: ServicesDep) -> JobObject:
    return JobObject.of(await services.fine_tuning.get(caller.app_id, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, caller: AppCaller, services: ServicesDep) -> JobObject:
    """Cancel a job that has not ended; a running trainer stops within seconds."""
    return JobObject.of(await services.fine_tuning.cancel(caller.app_id, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_events(
    job_id: str, caller: AppCaller, services: ServicesDep, limit: Limit = 20, after: Cursor = None
) -> EventList:
    """The job's progress, newest first: status changes, and metrics (step, training and validation loss)."""
    page = await services.fine_tuning.store.list_events(caller.app_id, job_id, limit=limit, after=after)
    return EventList(data=[EventObject.of(event) for event in page.items], has_more=page.has_more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str, caller: AppCaller, services: ServicesDep, limit: Limit = 10, after: Cursor = None
) -> CheckpointList:
    """The job's checkpoints, newest first (one per epoch; the last is the tuned model)."""
    page = await services.fine_tuning.store.list_checkpoints(caller.app_id, job_id, limit=limit, after=after)
    return CheckpointList.page([CheckpointObject.of(c) for c in page.items], page.has_more)
