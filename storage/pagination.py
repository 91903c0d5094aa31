"""OpenAI's cursor pagination (``limit``, ``order``, ``after``, ``before``) over rows ordered by (created_at, id).

``created_at`` has whole seconds, so the id breaks ties: ids made here are time-ordered (``time_ns`` first), and
rows created within one second keep their order.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, Select
from sqlalchemy.ext.asyncio import AsyncSession

Order = Literal["asc", "desc"]
Row = TypeVar("Row")


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time: ``prefix``, nanoseconds in hex, then random."""
    return f"{prefix}{time.time_ns():016x}{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: the anchor row's (created_at, id), from ``after`` or ``before``."""

    created_at: int
    id: str
    before: bool = False


@dataclass
class Page(Generic[Row]):
    items: list[Row]
    has_more: bool


async def fetch_page(
    session: AsyncSession,
    query: Select[Any],
    created: ColumnElement[Any],
    ident: ColumnElement[Any],
    *,
    limit: int,
    order: Order = "desc",
    cursor: Cursor | None = None,
) -> Page[Any]:
    """One page of ``query``'s rows in ``order``; with a ``before`` cursor, the page just before the anchor."""
    descending = order == "desc"
    if cursor is not None:
        later = (created > cursor.created_at) | ((created == cursor.created_at) & (ident > cursor.id))
        earlier = (created < cursor.created_at) | ((created == cursor.created_at) & (ident < cursor.id))
        # `after` continues in the list's order; `before` goes back against it.
        query = query.where(later if descending == cursor.before else earlier)
    backwards = cursor is not None and cursor.before
    newest_first = descending != backwards
    keys = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())
    rows = list((await session.scalars(query.order_by(*keys).limit(limit + 1))).all())
    items = rows[:limit]
    if backwards:
        items.reverse()
    return Page(items=items, has_more=len(rows) > limit)
