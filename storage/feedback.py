"""Feedback on answers: a rating per answer, by the app that got the answer, kept for evaluation datasets.

An answer is known by its response id, which its usage record carries; an id the app never got (another app's,
or none) is a 404, so an app can neither rate nor learn of another app's answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from errors import NotFound
from storage.engine import Database
from storage.tables import Feedback, Usage, now


@dataclass(frozen=True)
class FeedbackFilter:
    start: int | None = None
    end: int | None = None
    min_score: float | None = None
    max_score: float | None = None
    model: str | None = None
    user: str | None = None
    limit: int = 100


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def rate(
        self, app_id: str, response_id: str, *, score: float, comment: str | None, correction: str | None
    ) -> Feedback:
        """Record the app's rating of one of its answers, replacing an earlier one."""
        async with self.db.session() as session:
            answer = (
                await session.execute(
                    select(Usage.model, Usage.user, Usage.key_prefix)
                    .where(Usage.app_id == app_id, Usage.response_id == response_id, Usage.status == "ok")
                    .limit(1)
                )
            ).first()
        if answer is None:
            raise NotFound(f"No answer with id '{response_id}' was given to this app.", param="response_id")
        values = {"score": score, "comment": comment, "correction": correction, "updated_at": now()}
        try:
            async with self.db.session() as session, session.begin():
                replaced = await session.execute(
                    update(Feedback)
                    .where(Feedback.app_id == app_id, Feedback.response_id == response_id)
                    .values(**values)
                )
                if replaced.rowcount == 0:
                    session.add(
                        Feedback(
                            id=f"fb_{uuid.uuid4().hex[:24]}",
                            app_id=app_id,
                            response_id=response_id,
                            model=answer.model,
                            user=answer.user,
                            key_prefix=answer.key_prefix,
                            created_at=values["updated_at"],
                            **values,
                        )
                    )
        except IntegrityError:  # rated twice at the same moment: the other insert won, this one replaces it
            async with self.db.session() as session, session.begin():
                await session.execute(
                    update(Feedback)
                    .where(Feedback.app_id == app_id, Feedback.response_id == response_id)
                    .values(**values)
                )
        return await self.get(app_id, response_id)

    async def get(self, app_id: str, response_id: str) -> Feedback:
        async with self.db.session() as session:
            found = await session.scalar(
                select(Feedback).where(Feedback.app_id == app_id, Feedback.response_id == response_id)
            )
        if found is None:
            raise NotFound(f"No feedback on '{response_id}'.", param="response_id")
        return found

    async def list(self, app_id: str, where: FeedbackFilter) -> list[Feedback]:
        """The app's feedback, newest first."""
        query = select(Feedback).where(Feedback.app_id == app_id)
        if where.start is not None:
            query = query.where(Feedback.updated_at >= where.start)
        if where.end is not None:
            query = query.where(Feedback.updated_at < where.end)
        if where.min_score is not None:
            query = query.where(Feedback.score >= where.min_score)
        if where.max_score is not None:
            query = query.where(Feedback.score <= where.max_score)
        if where.model is not None:
            query = query.where(Feedback.model == where.model)
        if where.user is not None:
            query = query.where(Feedback.user == where.user)
        query = query.order_by(Feedback.updated_at.desc(), Feedback.id.desc()).limit(where.limit)
        async with self.db.session() as session:
            return list((await session.scalars(query)).all())
