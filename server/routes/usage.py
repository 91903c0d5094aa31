"""GET /v1/usage: an app's own usage (every app's with the admin key)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Query

from errors import InvalidRequest
from server.deps import AnyCaller, ServicesDep
from server.schemas import UsageReport
from storage.usage_reports import GroupBy, usage_summary

router = APIRouter(prefix="/v1", tags=["usage"])

DEFAULT_SPAN = 30 * 86400
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z; larger numbers overflow the database's integers


def parse_time(value: str | None, param: str) -> int | None:
    """Unix seconds or an ISO date/time (UTC when no zone is given)."""
    if value is None:
        return None
    invalid = InvalidRequest(
        f"Invalid value for '{param}': use unix seconds or an ISO date such as 2026-11-25.", param=param
    )
    if value.isascii() and value.isdigit():  # not str.isdigit alone: "²" is a digit that int() refuses
        seconds = int(value)
    else:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise invalid from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = int(moment.timestamp())
    if seconds > MAX_TIME:
        raise invalid
    return seconds


@router.get("/usage")
async def get_usage(
    caller: AnyCaller,
    services: ServicesDep,
    start: Annotated[str | None, Query(max_length=40)] = None,
    end: Annotated[str | None, Query(max_length=40)] = None,
    group_by: GroupBy = "day",
    app: Annotated[str | None, Query(max_length=128, description="admin key only: one app")] = None,
) -> UsageReport:
    end_at = parse_time(end, "end")
    if end_at is None:  # not `or`: 0 is a valid time
        end_at = int(time.time()) + 1
    start_at = parse_time(start, "start")
    if start_at is None:
        start_at = end_at - DEFAULT_SPAN
    if start_at >= end_at:
        raise InvalidRequest("'start' must be before 'end'.", param="start")
    if caller.is_admin:
        app_id = (await services.tenants.get_app(app)).id if app else None
    else:
        if app is not None or group_by == "app":
            raise InvalidRequest("Only an admin key can report on other apps.", param="app" if app else "group_by")
        app_id = caller.app_id
    data = await usage_summary(services.db, app_id=app_id, start=start_at, end=end_at, group_by=group_by)
    return UsageReport(group_by=group_by, start=start_at, end=end_at, data=data)
