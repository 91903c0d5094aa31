"""/v1/feedback: an app rates the answers it got, and reads its ratings back (the raw material of evaluation
datasets). The score is a thumb (1 or -1) or a number from 0 to 1; a second rating of an answer replaces the first."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

from server.deps import AppCaller, ServicesDep
from server.routes.usage import parse_time
from server.schemas import FeedbackList, FeedbackObject
from server.services import Services
from storage import tables
from storage.feedback import FeedbackFilter
from storage.tenants import Caller

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: StrictStr = Field(min_length=1, max_length=64, description="the `id` of a chat completion")
    score: StrictInt | StrictFloat = Field(description="1 or -1 (thumbs up or down), or a number from 0 to 1")
    comment: StrictStr | None = Field(None, max_length=10_000)
    correction: StrictStr | None = Field(None, max_length=100_000, description="the answer it should have been")

    @field_validator("score")
    @classmethod
    def _thumb_or_fraction(cls, score: float) -> float:
        if not math.isfinite(score) or not (score == -1 or 0 <= score <= 1):
            raise ValueError("score must be 1 or -1 (thumbs), or a number from 0 to 1")
        return float(score)


def feedback_object(row: tables.Feedback) -> FeedbackObject:
    return FeedbackObject.of_row(row)


async def record_feedback(
    services: Services, caller: Caller, response_id: str, *, score: float, comment: str | None, correction: str | None
) -> tables.Feedback:
    """Store the rating (the one way in, for /v1/feedback and the playground's thumbs), then forward it to LangSmith
    in the background when tracing is on."""
    row = await services.feedback.rate(caller.app_id, response_id, score=score, comment=comment, correction=correction)
    services.chat.spawn(
        services.langsmith_feedback.forward(response_id, score=score, comment=comment, correction=correction)
    )
    return row


@router.post("")
async def rate_answer(body: FeedbackCreate, caller: AppCaller, services: ServicesDep) -> FeedbackObject:
    row = await record_feedback(
        services, caller, body.response_id, score=body.score, comment=body.comment, correction=body.correction
    )
    return feedback_object(row)


@router.get("")
async def list_feedback(
    caller: AppCaller,
    services: ServicesDep,
    start: Annotated[str | None, Query(max_length=40, description="unix seconds or an ISO date")] = None,
    end: Annotated[str | None, Query(max_length=40, description="unix seconds or an ISO date")] = None,
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FeedbackList:
    where = FeedbackFilter(
        start=parse_time(start, "start"),
        end=parse_time(end, "end"),
        min_score=min_score,
        max_score=max_score,
        model=model,
        user=user,
        limit=limit,
    )
    rows = await services.feedback.list(caller.app_id, where)
    return FeedbackList(data=[feedback_object(row) for row in rows])
