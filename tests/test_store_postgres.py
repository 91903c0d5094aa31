"""The transcript store and SQL memory on a real PostgreSQL database (asyncpg), and a live server on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from errors import NotFound
from memory import SqlMemory
from storage import ConversationStore, Database, TurnRecord
from storage.tables import Conversation, Message, Usage

APP = "app_pg_tests"  # the app the store tests' conversations belong to
OTHER_APP = "app_pg_other"


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url)
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
def store(pg: Database) -> ConversationStore:
    return ConversationStore(pg)


@pytest.fixture
def user() -> str:
    """A user of the test's own: the database is shared by the session's tests."""
    return f"user-{uuid.uuid4().hex[:8]}"


def turn(conversation_id: str | None, question: str, answer: str, **kwargs) -> TurnRecord:
    kwargs.setdefault("app_id", APP)
    return TurnRecord(
        response_id=f"chatcmpl-{uuid.uuid4().hex}",
        model="gemma-3-270m",
        prompt_tokens=11,
        completion_tokens=5,
        latency_ms=12.5,
        conversation_id=conversation_id,
        new_messages=[HumanMessage(content=question)],
        answer=answer,
        finish_reason="stop",
        **kwargs,
    )


async def scalar(db: Database, query):
    async with db.session() as session:
        return await session.scalar(query)


async def message_rows(db: Database, conversation_id: str) -> int:
    return await scalar(db, select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id))


async def test_schema_is_created_once_and_again(pg):
    await pg.create_schema()  # idempotent
    await pg.ping()
    assert pg.engine.dialect.name == "postgresql" and pg.engine.driver == "asyncpg"
    async with pg.engine.connect() as conn:
        tables = set(
            (await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars()
        )
    assert {"conversations", "messages", "usage"} <= tables


async def test_create_get_and_delete_a_conversation(store, pg, user):
    created = await store.create_conversation(app_id=APP, title="Postgres", user=user, metadata={"k": "v", "ü": "ß"})
    assert created.id.startswith("conv_")

    fetched = await store.get_conversation(created.id, app_id=APP)
    assert (fetched.id, fetched.title, fetched.user, fetched.meta) == (created.id, "Postgres", user, {"k": "v", "ü": "ß"})
    assert fetched.created_at == created.created_at and fetched.updated_at == created.updated_at
    assert await store.messages(created.id) == []

    await store.delete_conversation(created.id, app_id=APP)
    with pytest.raises(NotFound) as info:
        await store.get_conversation(created.id, app_id=APP)
    assert info.value.param == "conversation_id"
    with pytest.raises(NotFound):
        await store.delete_conversation(created.id, app_id=APP)


async def test_list_newest_first_with_pagination(store, user):
    ids = [(await store.create_conversation(app_id=APP, title=f"c{n}", user=user)).id for n in range(5)]
    newest_first = list(reversed(ids))

    page = await store.list_conversations(app_id=APP, user=user)
    assert [c.id for c in page.items] == newest_first and page.has_more is False

    first = await store.list_conversations(app_id=APP, user=user, limit=2)
    assert [c.id for c in first.items] == newest_first[:2] and first.has_more is True
    second = await store.list_conversations(app_id=APP, user=user, limit=2, after=first.items[-1].id)
    assert [c.id for c in second.items] == newest_first[2:4] and second.has_more is True
    third = await store.list_conversations(app_id=APP, user=user, limit=2, after=second.items[-1].id)
    assert [c.id for c in third.items] == newest_first[4:] and third.has_more is False

    exact = await store.list_conversations(app_id=APP, user=user, limit=3, after=newest_first[1])
    assert [c.id for c in exact.items] == newest_first[2:] and exact.has_more is False

    with pytest.raises(NotFound) as info:
        await store.list_conversations(app_id=APP, after="conv_missing")
    assert info.value.param == "after"

    # Without a user filter the others' conversations are listed too, still newest first.
    everything = await store.list_conversations(app_id=APP, limit=100)
    keys = [(c.created_at, c.id) for c in everything.items]
    assert keys == sorted(keys, reverse=True)


async def test_record_turn_creates_the_conversation(store, pg, user):
    conversation_id = f"conv_{uuid.uuid4().hex}"
    record = turn(conversation_id, "  What is\nthe capital   of France?  ", "Paris.", create_conversation=True, user=user)
    assert await store.record_turn(record) == 2

    conversation = await store.get_conversation(conversation_id, app_id=APP)
    assert conversation.title == "What is the capital of France?"  # the first user message, whitespace folded
    assert conversation.user == user and conversation.meta == {}

    question, answer = await store.messages(conversation_id)
    assert (question.role, question.content) == ("user", "  What is\nthe capital   of France?  ")
    assert question.response_id is None and question.model is None
    assert (answer.role, answer.content) == ("assistant", "Paris.")
    assert answer.response_id == record.response_id and answer.model == "gemma-3-270m"
    assert (answer.prompt_tokens, answer.completion_tokens, answer.latency_ms) == (11, 5, 12.5)
    assert answer.finish_reason == "stop"
    assert question.id < answer.id

    usage = await scalar(pg, select(Usage).where(Usage.response_id == record.response_id))
    assert usage.conversation_id == conversation_id
    assert (usage.prompt_tokens, usage.completion_tokens, usage.status, usage.stream) == (11, 5, "ok", False)


async def test_record_turn_title_is_capped(store):
    conversation_id = f"conv_{uuid.uuid4().hex}"
    assert await store.record_turn(turn(conversation_id, "word " * 40, "ok", create_conversation=True))
    assert (await store.get_conversation(conversation_id, app_id=APP)).title == ("word " * 40)[:80]


async def test_record_turn_appends_to_an_existing_conversation_in_order(store, pg):
    conversation = await store.create_conversation(app_id=APP, title="ordered")
    for n in range(1, 4):
        record = turn(conversation.id, f"q{n}", f"a{n}")
        record.new_messages = [SystemMessage(content=f"s{n}"), HumanMessage(content=f"q{n}")] if n == 2 else [
            HumanMessage(content=f"q{n}")
        ]
        assert await store.record_turn(record) == (2 * n + (1 if n >= 2 else 0))

    rows = await store.messages(conversation.id)
    assert [(r.role, r.content) for r in rows] == [
        ("user", "q1"), ("assistant", "a1"),
        ("system", "s2"), ("user", "q2"), ("assistant", "a2"),
        ("user", "q3"), ("assistant", "a3"),
    ]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert [(r.role, r.content) for r in await store.messages(conversation.id, limit=3)] == [
        ("assistant", "a2"), ("user", "q3"), ("assistant", "a3"),
    ]
    # The title given at creation is kept; updated_at follows the turns.
    fetched = await store.get_conversation(conversation.id, app_id=APP)
    assert fetched.title == "ordered" and fetched.updated_at >= conversation.updated_at

    # SQL memory reads the same history, oldest first, capped to the newest messages.
    history = await SqlMemory(store).load(conversation.id)
    assert [(m.type, m.text) for m in history] == [
        ("human", "q1"), ("ai", "a1"), ("system", "s2"), ("human", "q2"), ("ai", "a2"), ("human", "q3"), ("ai", "a3"),
    ]
    capped = await SqlMemory(store, max_messages=2).load(conversation.id)
    assert [(m.type, m.text) for m in capped] == [("human", "q3"), ("ai", "a3")]
    await SqlMemory(store).ping()


async def test_record_turn_on_a_deleted_conversation_writes_no_messages(store, pg):
    conversation = await store.create_conversation(app_id=APP)
    assert await store.record_turn(turn(conversation.id, "q1", "a1"))
    await store.delete_conversation(conversation.id, app_id=APP)
    assert await message_rows(pg, conversation.id) == 0  # the delete took the messages with it

    late = turn(conversation.id, "q2", "a2")
    assert await store.record_turn(late) == 0
    assert await message_rows(pg, conversation.id) == 0
    assert await scalar(pg, select(func.count()).select_from(Conversation).where(Conversation.id == conversation.id)) == 0
    # The request itself still counts as usage.
    assert await scalar(pg, select(func.count()).select_from(Usage).where(Usage.response_id == late.response_id)) == 1


async def test_record_turn_without_a_conversation_only_records_usage(store, pg):
    record = turn(None, "stateless", "answer", stream=True, status="ok")
    assert await store.record_turn(record) == 0  # no conversation: no messages
    usage = await scalar(pg, select(Usage).where(Usage.response_id == record.response_id))
    assert usage.conversation_id is None and usage.stream is True
    assert await scalar(pg, select(func.count()).select_from(Message).where(Message.content == "stateless")) == 0


async def test_record_turn_is_atomic_when_the_conversation_already_exists(store, pg):
    conversation = await store.create_conversation(app_id=APP)
    clash = turn(conversation.id, "q", "a", create_conversation=True)
    with pytest.raises(IntegrityError):  # the primary key is taken: nothing of the turn is written
        await store.record_turn(clash)
    assert await message_rows(pg, conversation.id) == 0
    assert await scalar(pg, select(func.count()).select_from(Usage).where(Usage.response_id == clash.response_id)) == 0


async def test_conversations_are_scoped_to_their_app(store, pg, user):
    mine = await store.create_conversation(app_id=APP, user=user)
    assert await store.record_turn(turn(mine.id, "q1", "a1"))
    theirs = await store.create_conversation(app_id=OTHER_APP, user=user)

    # Another app can neither see, list, page from, delete nor write into it.
    with pytest.raises(NotFound):
        await store.get_conversation(mine.id, app_id=OTHER_APP)
    assert [c.id for c in (await store.list_conversations(app_id=OTHER_APP, user=user)).items] == [theirs.id]
    with pytest.raises(NotFound):
        await store.list_conversations(app_id=OTHER_APP, after=mine.id)
    with pytest.raises(NotFound):
        await store.delete_conversation(mine.id, app_id=OTHER_APP)
    assert await store.record_turn(turn(mine.id, "intruder", "no", app_id=OTHER_APP)) == 0
    assert [(r.role, r.content) for r in await store.messages(mine.id)] == [("user", "q1"), ("assistant", "a1")]

    # Within the app, ``user`` narrows further: a conversation of another user is not found.
    assert (await store.get_conversation(mine.id, app_id=APP, user=user)).id == mine.id
    with pytest.raises(NotFound):
        await store.get_conversation(mine.id, app_id=APP, user="someone-else")
    await store.delete_conversation(mine.id, app_id=APP, user=user)
    await store.delete_conversation(theirs.id, app_id=OTHER_APP)


# ---------------------------------------------------------------- a live server on PostgreSQL


@pytest.mark.slow
def test_live_server_two_turn_conversation_on_postgres(live_server, postgres_url):
    server = live_server(database_url=postgres_url)
    assert server.services.db.engine.dialect.name == "postgresql"
    client = server.openai()

    first = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body={"conversation_id": "new"},
        max_tokens=6,
        temperature=0,
    )
    conversation_id = first.model_extra["conversation_id"]
    assert conversation_id.startswith("conv_")

    second = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "And of Spain?"}],
        extra_body={"conversation_id": conversation_id},
        max_tokens=6,
        temperature=0,
    )
    assert second.model_extra["conversation_id"] == conversation_id
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the first turn was in the prompt

    stored = server.http().get(f"/v1/conversations/{conversation_id}").json()
    assert stored["title"] == "What is the capital of France?"
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "What is the capital of France?"),
        ("assistant", first.choices[0].message.content),
        ("user", "And of Spain?"),
        ("assistant", second.choices[0].message.content),
    ]
    assert [m["response_id"] for m in stored["messages"][1::2]] == [first.id, second.id]

    # The rows are in PostgreSQL, read back with a store of the test's own.
    async def read_back():
        db = Database(postgres_url)
        try:
            store = ConversationStore(db)
            rows = await store.messages(conversation_id)
            usage = await scalar(db, select(func.count()).select_from(Usage).where(Usage.conversation_id == conversation_id))
            return [(r.role, r.content) for r in rows], usage
        finally:
            await db.close()

    rows, usage = asyncio.run(read_back())
    assert rows == [(m["role"], m["content"]) for m in stored["messages"]]
    assert usage == 2
