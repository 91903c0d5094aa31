"""Feedback on answers: a rating per answer, by the app that got the answer, kept for evaluation datasets.

An answer is known by its response id, which its usage record carries; an id the app never got (another app's,
or none) is a 404, so an app can neither rate nor learn of another app's answers.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, select, update
from sqlalchemy.exc import IntegrityError

from errors import NotFound
from storage.engine import Database
from storage.message_records import openai_message, row_record
from storage.tables import Conversation, Feedback, Message, StoredCompletion, Usage, now


@dataclass(frozen=True)
class FeedbackFilter:
    start: int | None = None
    end: int | None = None
    min_score: float | None = None
    max_score: float | None = None
    model: str | None = None
    user: str | None = None
    limit: int = 100

    def apply(self, query: Select) -> Select:
        """``query`` on the feedback table, narrowed to what passes the filter (the limit is the caller's)."""
        if self.start is not None:
            query = query.where(Feedback.updated_at >= self.start)
        if self.end is not None:
            query = query.where(Feedback.updated_at < self.end)
        if self.min_score is not None:
            query = query.where(Feedback.score >= self.min_score)
        if self.max_score is not None:
            query = query.where(Feedback.score <= self.max_score)
        if self.model is not None:
            query = query.where(Feedback.model == self.model)
        if self.user is not None:
            query = query.where(Feedback.user == self.user)
        return query


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def rate(
        self, app_id: str, response_id: str, *, score: float, comment: str | None, correction: str | None
    ) -> Feedback:
        """Record the app's rating of one of its answers, replacing an earlier one."""
        answer = await self._answer(app_id, response_id)
        if answer is None:
            # An answer given a moment ago may have its usage record still buffered (storage/writer.py): in this
            # process's writer, written now, or in another worker's, written within the flush interval.
            await self.db.writer.flush()
            answer = await self._answer(app_id, response_id)
        if answer is None:
            await asyncio.sleep(self.db.writer.flush_seconds + 0.05)
            answer = await self._answer(app_id, response_id)
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

    async def _answer(self, app_id: str, response_id: str) -> Row | None:
        """The model, user and key of the app's successful answer ``response_id``, from its usage record."""
        async with self.db.session() as session:
            return (
                await session.execute(
                    select(Usage.model, Usage.user, Usage.key_prefix)
                    .where(Usage.app_id == app_id, Usage.response_id == response_id, Usage.status == "ok")
                    .limit(1)
                )
            ).first()

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
        query = where.apply(select(Feedback).where(Feedback.app_id == app_id))
        query = query.order_by(Feedback.updated_at.desc(), Feedback.id.desc()).limit(where.limit)
        async with self.db.session() as session:
            return list((await session.scalars(query)).all())

    async def export(self, app_id: str | None, where: FeedbackFilter) -> tuple[list[dict[str, Any]], int]:
        """Rated answers as evaluation examples (``evals`` reads them), oldest rating first, and how many rated
        answers had to be left out because their input was not kept (a stateless request without ``store: true``).

        Each example: the answer's input messages (a conversation's turns up to it, or the stored request's), the
        correction as ``reference`` where one was given, and the answer and its rating in ``metadata``.
        """
        query = select(Feedback).order_by(Feedback.updated_at, Feedback.id)
        if app_id is not None:
            query = query.where(Feedback.app_id == app_id)
        query = where.apply(query)
        async with self.db.session() as session:
            ratings = list((await session.scalars(query)).all())
            inputs = await _inputs(session, ratings)
        examples = []
        for rating in ratings:
            found = inputs.get((rating.app_id, rating.response_id))
            if found is None:
                continue
            messages, answer = found
            examples.append(
                {
                    "id": rating.response_id,
                    "messages": [openai_message(record) for record in messages],
                    "reference": rating.correction,
                    "metadata": {
                        "source": "feedback",
                        "app_id": rating.app_id,
                        "answer": answer,
                        "score": rating.score,
                        "comment": rating.comment,
                        "model": rating.model,
                        "user": rating.user,
                        "rated_at": rating.updated_at,
                    },
                }
            )
        return examples, len(ratings) - len(examples)


async def _inputs(session, ratings: list[Feedback]) -> dict[tuple[str, str], tuple[list[dict[str, Any]], str]]:
    """(app, response id) -> (the input messages as records, the answer) of each rated answer whose input was kept."""
    ids = [rating.response_id for rating in ratings]
    found: dict[tuple[str, str], tuple[list[dict[str, Any]], str]] = {}
    if not ids:
        return found
    stored = await session.scalars(select(StoredCompletion).where(StoredCompletion.response_id.in_(ids)))
    for row in stored:
        found[(row.app_id, row.response_id)] = (row.messages, row.answer)
    answers = await session.execute(
        select(Message, Conversation.app_id)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.response_id.in_(ids), Message.role == "assistant")
    )
    for answer, owner in answers.all():
        if (owner, answer.response_id) in found:
            continue
        earlier = await session.scalars(
            select(Message)
            .where(Message.conversation_id == answer.conversation_id, Message.id < answer.id)
            .order_by(Message.id)
        )
        found[(owner, answer.response_id)] = ([row_record(row) for row in earlier], answer.content)
    return found
