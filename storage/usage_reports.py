"""Usage reports: the usage table (requests, tokens, images and cost) summed by day, model, key or app."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import Float, Integer, case, cast, func, select

from storage.engine import Database
from storage.tables import Usage

GroupBy = Literal["day", "model", "key", "app"]
SAFETY_OUTCOMES = ("flagged", "blocked", "redacted")


async def usage_summary(db: Database, *, app_id: str | None, start: int, end: int, group_by: GroupBy) -> list[dict]:
    """Totals per group for ``start <= created_at < end``; ``app_id=None`` spans every app. This process's buffered
    usage records are written first (a client sees its own requests); other workers' within their flush interval."""
    await db.writer.flush()
    group = {
        "day": cast(Usage.created_at - Usage.created_at % 86400, Integer),
        "model": Usage.model,
        "key": Usage.key_prefix,
        "app": Usage.app_id,
    }[group_by]
    query = (
        select(
            group.label("group"),
            func.count().label("requests"),
            func.coalesce(func.sum(Usage.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(Usage.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(case((Usage.cached, 1), else_=0)), 0).label("cached_requests"),
            func.coalesce(func.sum(case((Usage.status != "ok", 1), else_=0)), 0).label("failed_requests"),
            func.coalesce(func.sum(Usage.images), 0).label("images"),
            *(
                func.coalesce(func.sum(case((Usage.safety_outcome == outcome, 1), else_=0)), 0).label(outcome)
                for outcome in SAFETY_OUTCOMES
            ),
            # A sum of doubles, kept a double (no numeric/decimal cast that would round it).
            func.coalesce(func.sum(Usage.cost), cast(0, Float)).label("cost"),
        )
        .where(Usage.created_at >= start, Usage.created_at < end)
        .group_by(group)
        .order_by(group)
    )
    if app_id is not None:
        query = query.where(Usage.app_id == app_id)
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    return [
        {
            "group": _label(row.group, group_by),
            "requests": row.requests,
            "prompt_tokens": int(row.prompt_tokens),
            "completion_tokens": int(row.completion_tokens),
            "total_tokens": int(row.prompt_tokens) + int(row.completion_tokens),
            "cached_requests": int(row.cached_requests),
            "failed_requests": int(row.failed_requests),
            "images": int(row.images),
            "cost": float(row.cost),
            **{f"{outcome}_requests": int(getattr(row, outcome)) for outcome in SAFETY_OUTCOMES},
        }
        for row in rows
    ]


def _label(value, group_by: GroupBy) -> str | None:
    if group_by == "day" and value is not None:
        return dt.datetime.fromtimestamp(int(value), dt.UTC).date().isoformat()
    return value
