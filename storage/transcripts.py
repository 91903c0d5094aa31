"""The transcript store: conversations, messages and usage in the SQL database.

The database is the source of truth for conversations; Redis memory is a
cache of it. A turn (the user's messages and the answer) is written in one
transaction, so a failed or cancelled call leaves nothing half-written; its usage
record follows it through the writer's buffer (storage/writer.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from sqlalchemy import Connection, delete, insert, select, update

from errors import APIError, NotFound
from storage.engine import Database
from storage.message_records import to_record
from storage.tables import Conversation, IdempotencyKey, Message, StoredCompletion, now


def new_conversation_id() -> str:
    # Time-ordered (nanoseconds, then random): lists sort by (created_at, id), and created_at has
    # whole seconds, so the id must order conversations created within the same second.
    return f"conv_{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


@dataclass
class TurnRecord:
    """Everything one chat completion leaves behind."""

    response_id: str
    app_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    conversation_id: str | None = None
    create_conversation: bool = False
    user: str | None = None
    new_messages: Sequence[BaseMessage] = ()
    answer: str = ""
    answer_tool_calls: list[dict[str, Any]] | None = None  # [{"name", "args", "id"}]
    finish_reason: str | None = None
    stream: bool = False
    status: str = "ok"
    key_prefix: str | None = None
    cached: bool = False
    cost: float = 0.0  # at the route's prices; a failure costs nothing
    citations: list[dict[str, Any]] | None = None  # the knowledge chunks the answer was grounded in
    safety: dict[str, Any] | None = None  # the safety checks' verdicts (graphs.chat.safety)
    # A stateless request's messages (as message records), kept with its answer because it asked (``store``).
    stored_messages: list[dict[str, Any]] | None = None
    deployment: str | None = None  # of the route, the one that answered
    # The request's idempotency key, and the reply a retry with it gets (storage.idempotency), stored with the turn.
    idempotency_key: str | None = None
    reply: dict[str, Any] | None = None
    images: int = 0  # images generated (image requests: storage.images writes their usage with the images)

    @classmethod
    def failure(
        cls,
        *,
        response_id: str,
        app_id: str,
        model: str,
        error: APIError,
        latency_ms: float,
        key_prefix: str | None = None,
        user: str | None = None,
        stream: bool = False,
        safety: dict[str, Any] | None = None,
        deployment: str | None = None,
    ) -> TurnRecord:
        """The usage record of a request that failed: no tokens, no messages, its error code as status."""
        return cls(
            response_id=response_id,
            app_id=app_id,
            model=model,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=latency_ms,
            key_prefix=key_prefix,
            user=user,
            stream=stream,
            status=error.code or f"http_{error.status_code}",
            safety=safety,
            deployment=deployment,
        )


def without_evidence(safety: dict[str, Any] | None) -> dict[str, Any] | None:
    """The verdicts as a usage record keeps them: without the input guard's excerpts of the request (usage records
    hold no message text; the message row has it)."""
    if not safety:
        return None
    if "matches" not in (safety.get("input") or {}):
        return safety
    return {**safety, "input": {key: value for key, value in safety["input"].items() if key != "matches"}}


def safety_outcome(safety: dict[str, Any] | None) -> str | None:
    """The strongest thing a request's safety checks did (the shape is graphs.chat.safety's), for usage reports."""
    if not safety:
        return None
    actions = {(safety.get(check) or {}).get("action") for check in ("input", "moderation")}
    if "blocked" in actions or (safety.get("context") or {}).get("dropped"):
        return "blocked"
    if "flagged" in actions or (safety.get("context") or {}).get("flagged"):
        return "flagged"
    return "redacted" if any((safety.get("redactions") or {}).values()) else None


def usage_row(turn: TurnRecord, stamp: int) -> dict[str, Any]:
    """The usage record of a request, as a row of ``usage``: every request's, chat or not, is written from this."""
    return {
        "created_at": stamp,
        "app_id": turn.app_id,
        "key_prefix": turn.key_prefix,
        "user": turn.user,
        "cached": turn.cached,
        "response_id": turn.response_id,
        "conversation_id": turn.conversation_id,
        "model": turn.model,
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": turn.completion_tokens,
        "latency_ms": turn.latency_ms,
        "stream": turn.stream,
        "status": turn.status,
        "cost": turn.cost,
        "safety": without_evidence(turn.safety),
        "safety_outcome": safety_outcome(turn.safety),
        "deployment": turn.deployment,
        "images": turn.images,
    }


@dataclass
class ConversationPage:
    items: list[Conversation]
    has_more: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _visible(owner_app: str, owner_user: str | None, app_id: str, user: str | None) -> bool:
    """Data belongs to its app, and to its user when it has one and the caller names a user."""
    return owner_app == app_id and (user is None or owner_user in (None, user))


def _message_row(conversation_id: str, role: str, content: str, stamp: int, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(
        (
            "response_id", "model", "prompt_tokens", "completion_tokens", "latency_ms", "finish_reason",
            "tool_calls", "tool_call_id", "citations", "safety",
        )
    )  # fmt: skip
    row.update(conversation_id=conversation_id, role=role, content=content, created_at=stamp, **fields)
    return row


def _client_message_row(conversation_id: str, message: BaseMessage, stamp: int) -> dict[str, Any]:
    record = to_record(message)
    return _message_row(conversation_id, record.pop("role"), record.pop("content"), stamp, **record)


def _turn_rows(turn: TurnRecord, stamp: int) -> list[dict[str, Any]]:
    """The turn's messages as rows of ``messages``: the client's new ones, then the answer."""
    assert turn.conversation_id is not None
    rows = [_client_message_row(turn.conversation_id, message, stamp) for message in turn.new_messages]
    rows.append(
        _message_row(
            turn.conversation_id,
            "assistant",
            turn.answer,
            stamp,
            response_id=turn.response_id,
            model=turn.model,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            latency_ms=turn.latency_ms,
            finish_reason=turn.finish_reason,
            tool_calls=turn.answer_tool_calls,
            citations=turn.citations or None,
            safety=turn.safety or None,
        )
    )
    return rows


def _title_from(messages: Sequence[BaseMessage]) -> str | None:
    first = next((m.text for m in messages if m.type == "human" and m.text), None)
    return " ".join(first.split())[:80] if first else None


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_conversation(
        self,
        *,
        app_id: str,
        title: str | None = None,
        user: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation:
        conversation = Conversation(
            id=new_conversation_id(),
            app_id=app_id,
            title=title,
            user=user,
            meta=metadata or {},
            created_at=now(),
            updated_at=now(),
        )
        async with self.db.session() as session, session.begin():
            session.add(conversation)
        return conversation

    async def check_conversation(self, conversation_id: str, *, app_id: str, user: str | None = None) -> None:
        """404 unless the conversation is the app's (and the user's, when ``user`` is given).

        One Core query, no ORM object: the chat path asks this on every turn.
        """
        query = select(Conversation.app_id, Conversation.user).where(Conversation.id == conversation_id)
        row = await self.db.read(lambda conn: conn.execute(query).first())
        if row is None or not _visible(row.app_id, row.user, app_id, user):
            raise NotFound(f"No conversation found with id '{conversation_id}'.", param="conversation_id")

    async def get_conversation(self, conversation_id: str, *, app_id: str, user: str | None = None) -> Conversation:
        """The app's conversation (and the user's, when ``user`` is given); 404 for anyone else's."""
        async with self.db.session() as session:
            conversation = await session.get(Conversation, conversation_id)
        if conversation is None or not _visible(conversation.app_id, conversation.user, app_id, user):
            raise NotFound(f"No conversation found with id '{conversation_id}'.", param="conversation_id")
        return conversation

    async def list_conversations(
        self, *, app_id: str, limit: int = 20, after: str | None = None, user: str | None = None
    ) -> ConversationPage:
        query = (
            select(Conversation)
            .where(Conversation.app_id == app_id)
            .order_by(Conversation.created_at.desc(), Conversation.id.desc())
        )
        if user is not None:
            query = query.where(Conversation.user == user)
        async with self.db.session() as session:
            if after is not None:
                anchor = await session.get(Conversation, after)
                if anchor is None or anchor.app_id != app_id:
                    raise NotFound(f"No conversation found with id '{after}'.", param="after")
                query = query.where(
                    (Conversation.created_at < anchor.created_at)
                    | ((Conversation.created_at == anchor.created_at) & (Conversation.id < anchor.id))
                )
            rows = list((await session.scalars(query.limit(limit + 1))).all())
        return ConversationPage(items=rows[:limit], has_more=len(rows) > limit)

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        app_id: str,
        user: str | None = None,
        changes: dict[str, Any],
    ) -> Conversation:
        """Set ``changes`` (``title``, ``meta``) on the app's conversation; 404 for anyone else's."""
        await self.check_conversation(conversation_id, app_id=app_id, user=user)
        if changes:
            async with self.db.session() as session, session.begin():
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id, Conversation.app_id == app_id)
                    .values(**changes)
                )
        return await self.get_conversation(conversation_id, app_id=app_id, user=user)

    async def delete_conversation(self, conversation_id: str, *, app_id: str, user: str | None = None) -> None:
        await self.check_conversation(conversation_id, app_id=app_id, user=user)
        async with self.db.session() as session, session.begin():
            await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            result = await session.execute(
                delete(Conversation).where(Conversation.id == conversation_id, Conversation.app_id == app_id)
            )
        if result.rowcount == 0:
            raise NotFound(f"No conversation found with id '{conversation_id}'.", param="conversation_id")

    async def messages(self, conversation_id: str, limit: int | None = None) -> list[Message]:
        """The conversation's messages, oldest first; the newest ``limit`` when given."""
        query = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id.desc())
        if limit is not None:
            query = query.limit(limit)
        async with self.db.session() as session:
            rows = list((await session.scalars(query)).all())
        rows.reverse()
        return rows

    async def record_turn(self, turn: TurnRecord) -> int:
        """Write the turn, then its usage record, through the process's writer (storage/writer.py).

        A turn that leaves rows a client relies on (a conversation's messages, a stored completion, an idempotent
        reply) is committed before this returns, in a transaction it may share with concurrent turns. A request that
        leaves only its usage record (stateless, or failed) is buffered and written within the flush interval.

        Returns how many messages the conversation holds now (which lets Redis memory check
        that its copy is whole), 0 when the conversation was deleted meanwhile or none was given.
        Core statements, not the ORM: this is on every request's path.
        """
        stamp = now()
        if turn.conversation_id is None and turn.stored_messages is None and turn.idempotency_key is None:
            self.db.writer.record_usage(usage_row(turn, stamp))
            return 0
        # Its usage record is buffered once the turn is committed (storage/writer.py): the turn's commit waits for
        # its own rows only.
        return await self.db.writer.commit(
            lambda conn: self._write_turn(conn, turn, stamp), usage=usage_row(turn, stamp)
        )

    @staticmethod
    def _write_turn(conn: Connection, turn: TurnRecord, stamp: int) -> int:
        """The turn's rows, in as few statements as it takes: each is a round trip (a thread hop on SQLite). A new
        conversation is inserted with its count; a continued one learns its count from its own UPDATE."""
        total = 0
        if turn.conversation_id is not None:
            rows = _turn_rows(turn, stamp)
            if turn.create_conversation:
                conn.execute(
                    insert(Conversation).values(
                        id=turn.conversation_id,
                        app_id=turn.app_id,
                        title=_title_from(turn.new_messages),
                        user=turn.user,
                        meta={},
                        created_at=stamp,
                        updated_at=stamp,
                        message_count=len(rows),
                    )
                )
                total = len(rows)
            else:  # None: the conversation was deleted meanwhile, and the turn is not kept
                total = (
                    conn.scalar(
                        update(Conversation)
                        .where(Conversation.id == turn.conversation_id, Conversation.app_id == turn.app_id)
                        .values(updated_at=stamp, message_count=Conversation.message_count + len(rows))
                        .returning(Conversation.message_count)
                    )
                    or 0
                )
            if total:
                conn.execute(insert(Message), rows)
        if turn.stored_messages is not None:
            conn.execute(
                insert(StoredCompletion).values(
                    response_id=turn.response_id,
                    app_id=turn.app_id,
                    user=turn.user,
                    model=turn.model,
                    messages=turn.stored_messages,
                    answer=turn.answer,
                    created_at=stamp,
                )
            )
        if turn.idempotency_key is not None:
            conn.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.app_id == turn.app_id,
                    IdempotencyKey.key == turn.idempotency_key,
                    IdempotencyKey.response_id == turn.response_id,
                )
                .values(reply=turn.reply)
            )
        return total
