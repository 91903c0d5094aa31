"""The transcript store and conversation memory against real Redis and real databases, and the chat graph's
memory window.

Every test on the ``db`` or ``store`` fixture (tests/conftest.py) runs twice: on a SQLite file and on PostgreSQL
(asyncpg). PostgreSQL's own checks, and a live server on it, are in tests/test_store_postgres.py.

The graph tests swap the route's ChatOpenAI for langchain-core's fake chat model
(recording what it receives); everything else is real.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from errors import ContextLengthExceeded, InvalidRequest, NotFound
from memory import RedisMemory, SqlMemory
from server.services import Services
from server.settings import Settings
from storage import ConversationStore, Database, TurnRecord
from storage.message_records import from_record
from storage.tables import Conversation, Message, Usage
from tests.fakes import chat_graph, fake_registry

APP = "app_memory_tests"  # the app every stored conversation here belongs to
OTHER_APP = "app_memory_other"
USER = "user-1"

# ---------------------------------------------------------------- fixtures and helpers (``db`` and ``store``: conftest)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix(request) -> str:
    """A key prefix of the test's own, so tests never see each other's lists."""
    return f"genai:test:{request.node.name}:{id(request)}:"


def records(raw: list[bytes]) -> list[tuple[str, str]]:
    return [(item["role"], item["content"]) for item in map(orjson.loads, raw)]


def pairs(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, m.text) for m in messages]


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


async def record(store: ConversationStore, conversation_id: str, question: str, answer: str, **kwargs) -> int:
    return await store.record_turn(turn(conversation_id, question, answer, **kwargs))


async def conversation_with_turns(store: ConversationStore, turns: int) -> str:
    conversation = await store.create_conversation(app_id=APP, title="memory test")
    for n in range(1, turns + 1):
        assert await record(store, conversation.id, f"q{n}", f"a{n}")
    return conversation.id


def expected(turns: range) -> list[tuple[str, str]]:
    return [pair for n in turns for pair in (("human", f"q{n}"), ("ai", f"a{n}"))]


async def scalar(db: Database, query):
    async with db.session() as session:
        return await session.scalar(query)


async def count(db: Database, table, *where) -> int:
    """Rows of ``table`` (a mapped class) matching ``where``."""
    return await scalar(db, select(func.count()).select_from(table).where(*where))


# ---------------------------------------------------------------- the transcript store


async def test_create_get_and_delete_a_conversation(store):
    created = await store.create_conversation(app_id=APP, title="Stored", user=USER, metadata={"k": "v", "ü": "ß"})
    assert created.id.startswith("conv_")

    fetched = await store.get_conversation(created.id, app_id=APP)
    assert (fetched.id, fetched.title, fetched.user, fetched.meta) == (created.id, "Stored", USER, {"k": "v", "ü": "ß"})
    assert fetched.created_at == created.created_at and fetched.updated_at == created.updated_at
    assert await store.messages(created.id) == []

    await store.delete_conversation(created.id, app_id=APP)
    with pytest.raises(NotFound) as info:
        await store.get_conversation(created.id, app_id=APP)
    assert info.value.param == "conversation_id"
    with pytest.raises(NotFound):
        await store.delete_conversation(created.id, app_id=APP)


async def test_list_newest_first_with_pagination(store):
    ids = [(await store.create_conversation(app_id=APP, title=f"c{n}", user=USER)).id for n in range(5)]
    newest_first = list(reversed(ids))

    page = await store.list_conversations(app_id=APP, user=USER)
    assert [c.id for c in page.items] == newest_first and page.has_more is False

    first = await store.list_conversations(app_id=APP, user=USER, limit=2)
    assert [c.id for c in first.items] == newest_first[:2] and first.has_more is True
    second = await store.list_conversations(app_id=APP, user=USER, limit=2, after=first.items[-1].id)
    assert [c.id for c in second.items] == newest_first[2:4] and second.has_more is True
    third = await store.list_conversations(app_id=APP, user=USER, limit=2, after=second.items[-1].id)
    assert [c.id for c in third.items] == newest_first[4:] and third.has_more is False

    exact = await store.list_conversations(app_id=APP, user=USER, limit=3, after=newest_first[1])
    assert [c.id for c in exact.items] == newest_first[2:] and exact.has_more is False

    with pytest.raises(NotFound) as info:
        await store.list_conversations(app_id=APP, after="conv_missing")
    assert info.value.param == "after"

    # Without a user filter the others' conversations are listed too, still newest first.
    others = [(await store.create_conversation(app_id=APP, user=user)).id for user in ("user-2", None)]
    everything = await store.list_conversations(app_id=APP, limit=100)
    assert [c.id for c in everything.items] == list(reversed(others)) + newest_first
    keys = [(c.created_at, c.id) for c in everything.items]
    assert keys == sorted(keys, reverse=True)


async def test_record_turn_creates_the_conversation(store, db):
    conversation_id = f"conv_{uuid.uuid4().hex}"
    record = turn(conversation_id, "  What is\nthe capital   of France?  ", "Paris.", create_conversation=True, user=USER)
    assert await store.record_turn(record) == 2

    conversation = await store.get_conversation(conversation_id, app_id=APP)
    assert conversation.title == "What is the capital of France?"  # the first user message, whitespace folded
    assert conversation.user == USER and conversation.meta == {}

    question, answer = await store.messages(conversation_id)
    assert (question.role, question.content) == ("user", "  What is\nthe capital   of France?  ")
    assert question.response_id is None and question.model is None
    assert (answer.role, answer.content) == ("assistant", "Paris.")
    assert answer.response_id == record.response_id and answer.model == "gemma-3-270m"
    assert (answer.prompt_tokens, answer.completion_tokens, answer.latency_ms) == (11, 5, 12.5)
    assert answer.finish_reason == "stop"
    assert question.id < answer.id

    await store.db.writer.flush()  # the turn's usage record is buffered once the turn is committed
    usage = await scalar(db, select(Usage).where(Usage.response_id == record.response_id))
    assert usage.conversation_id == conversation_id
    assert (usage.prompt_tokens, usage.completion_tokens, usage.status, usage.stream) == (11, 5, "ok", False)


async def test_record_turn_title_is_capped(store):
    conversation_id = f"conv_{uuid.uuid4().hex}"
    assert await store.record_turn(turn(conversation_id, "word " * 40, "ok", create_conversation=True))
    assert (await store.get_conversation(conversation_id, app_id=APP)).title == ("word " * 40)[:80]


async def test_record_turn_appends_to_an_existing_conversation_in_order(store):
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
    assert pairs(history) == [
        ("human", "q1"), ("ai", "a1"), ("system", "s2"), ("human", "q2"), ("ai", "a2"), ("human", "q3"), ("ai", "a3"),
    ]
    capped = await SqlMemory(store, max_messages=2).load(conversation.id)
    assert pairs(capped) == [("human", "q3"), ("ai", "a3")]
    await SqlMemory(store).ping()


async def test_record_turn_on_a_deleted_conversation_writes_no_messages(store, db):
    conversation = await store.create_conversation(app_id=APP)
    assert await record(store, conversation.id, "q1", "a1")
    await store.delete_conversation(conversation.id, app_id=APP)
    assert await count(db, Message, Message.conversation_id == conversation.id) == 0  # the delete took them along

    late = turn(conversation.id, "q2", "a2")
    assert await store.record_turn(late) == 0
    assert await count(db, Message, Message.conversation_id == conversation.id) == 0
    assert await count(db, Conversation, Conversation.id == conversation.id) == 0
    # The request itself still counts as usage.
    await store.db.writer.flush()
    assert await count(db, Usage, Usage.response_id == late.response_id) == 1


async def test_record_turn_without_a_conversation_only_records_usage(store, db):
    record = turn(None, "stateless", "answer", stream=True, status="ok")
    assert await store.record_turn(record) == 0  # no conversation: no messages
    await store.db.writer.flush()  # its usage record is buffered (storage/writer.py)
    usage = await scalar(db, select(Usage).where(Usage.response_id == record.response_id))
    assert usage.conversation_id is None and usage.stream is True
    assert await count(db, Message, Message.content == "stateless") == 0


async def test_record_turn_is_atomic_when_the_conversation_already_exists(store, db):
    conversation = await store.create_conversation(app_id=APP)
    clash = turn(conversation.id, "q", "a", create_conversation=True)
    with pytest.raises(IntegrityError):  # the primary key is taken: nothing of the turn is written
        await store.record_turn(clash)
    assert await count(db, Message, Message.conversation_id == conversation.id) == 0
    assert await count(db, Usage, Usage.response_id == clash.response_id) == 0


async def test_conversations_are_scoped_to_their_app(store):
    mine = await store.create_conversation(app_id=APP, user=USER)
    assert await record(store, mine.id, "q1", "a1")
    theirs = await store.create_conversation(app_id=OTHER_APP, user=USER)

    # Another app can neither see, list, page from, delete nor write into it.
    with pytest.raises(NotFound):
        await store.get_conversation(mine.id, app_id=OTHER_APP)
    assert [c.id for c in (await store.list_conversations(app_id=OTHER_APP, user=USER)).items] == [theirs.id]
    with pytest.raises(NotFound):
        await store.list_conversations(app_id=OTHER_APP, after=mine.id)
    with pytest.raises(NotFound):
        await store.delete_conversation(mine.id, app_id=OTHER_APP)
    assert await record(store, mine.id, "intruder", "no", app_id=OTHER_APP) == 0
    assert [(r.role, r.content) for r in await store.messages(mine.id)] == [("user", "q1"), ("assistant", "a1")]

    # Within the app, ``user`` narrows further: a conversation of another user is not found.
    assert (await store.get_conversation(mine.id, app_id=APP, user=USER)).id == mine.id
    with pytest.raises(NotFound):
        await store.get_conversation(mine.id, app_id=APP, user="someone-else")
    await store.delete_conversation(mine.id, app_id=APP, user=USER)
    await store.delete_conversation(theirs.id, app_id=OTHER_APP)


# ---------------------------------------------------------------- RedisMemory


async def test_redis_load_fills_the_list_with_ttl_from_settings(tmp_path, redis_url, redis):
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", redis_url=redis_url, memory_ttl_seconds=321)
    services = Services.build(settings)
    await services.open()
    try:
        memory = services.memory
        assert isinstance(memory, RedisMemory)
        assert memory.ttl_seconds == 321
        conversation_id = await conversation_with_turns(services.store, 2)

        loaded = await memory.load(conversation_id)
        assert pairs(loaded) == expected(range(1, 3))
        key = memory.key(conversation_id)
        assert records(await redis.lrange(key, 0, -1)) == [
            ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
        ]
        assert 315 <= await redis.ttl(key) <= 321

        # A load served from Redis refreshes the TTL.
        await redis.expire(key, 10)
        assert pairs(await memory.load(conversation_id)) == expected(range(1, 3))
        assert 315 <= await redis.ttl(key) <= 321
        await memory.forget(conversation_id)
    finally:
        await services.close()


async def test_redis_append_extends_a_live_list(store, redis, prefix):
    memory = RedisMemory(redis, store, ttl_seconds=600, prefix=prefix)
    conversation_id = await conversation_with_turns(store, 1)
    await memory.load(conversation_id)

    total = await record(store, conversation_id, "q2", "a2")
    assert total
    await memory.append(conversation_id, [HumanMessage(content="q2"), AIMessage(content="a2")], total)

    key = memory.key(conversation_id)
    assert records(await redis.lrange(key, 0, -1)) == [
        ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
    ]
    assert 590 <= await redis.ttl(key) <= 600
    assert pairs(await memory.load(conversation_id)) == expected(range(1, 3))
    await memory.forget(conversation_id)


async def test_redis_list_expires_and_is_rebuilt_from_the_database(store, redis, prefix):
    memory = RedisMemory(redis, store, ttl_seconds=600, prefix=prefix)
    conversation_id = await conversation_with_turns(store, 3)
    key = memory.key(conversation_id)

    first = await memory.load(conversation_id)
    assert pairs(first) == expected(range(1, 4))
    assert 590 <= await redis.ttl(key) <= 600  # the rebuild set the idle TTL

    await redis.pexpire(key, 1)  # the idle time runs out (rather than waiting 600 s, or racing a short TTL)
    await asyncio.sleep(0.05)
    assert await redis.exists(key) == 0  # Redis expired it

    rebuilt = await memory.load(conversation_id)
    assert pairs(rebuilt) == pairs(first)
    assert records(await redis.lrange(key, 0, -1)) == [
        ("user" if t == "human" else "assistant", text) for t, text in pairs(first)
    ]
    await memory.forget(conversation_id)


async def test_redis_append_after_expiry_leaves_no_partial_list(store, redis, prefix):
    memory = RedisMemory(redis, store, ttl_seconds=600, prefix=prefix)
    conversation_id = await conversation_with_turns(store, 2)
    key = memory.key(conversation_id)
    await memory.load(conversation_id)
    await redis.delete(key)  # as if it had expired

    # The next turn is committed, then appended: RPUSHX must not start a list holding only this turn.
    total = await record(store, conversation_id, "q3", "a3")
    assert total
    await memory.append(conversation_id, [HumanMessage(content="q3"), AIMessage(content="a3")], total)
    assert await redis.exists(key) == 0

    loaded = await memory.load(conversation_id)
    assert pairs(loaded) == expected(range(1, 4))
    # The append marked the conversation stale, so that load read the database and did not
    # cache (a rebuild racing with this turn could have cached an old copy); once the mark
    # lapses the next load caches the whole history again.
    assert await redis.exists(key) == 0
    await redis.delete(memory.stale_key(conversation_id))
    assert pairs(await memory.load(conversation_id)) == expected(range(1, 4))
    assert len(await redis.lrange(key, 0, -1)) == 6
    await memory.forget(conversation_id)


async def test_redis_forget_removes_the_list(store, redis, prefix):
    memory = RedisMemory(redis, store, prefix=prefix)
    conversation_id = await conversation_with_turns(store, 1)
    await memory.load(conversation_id)
    assert await redis.exists(memory.key(conversation_id)) == 1

    await memory.forget(conversation_id)
    assert await redis.exists(memory.key(conversation_id)) == 0
    await memory.forget(conversation_id)  # forgetting twice is fine


async def test_redis_max_messages_caps_the_list(store, redis, prefix):
    memory = RedisMemory(redis, store, max_messages=4, prefix=prefix)
    conversation_id = await conversation_with_turns(store, 3)
    key = memory.key(conversation_id)

    # Rebuilt from the database: only the newest four.
    assert pairs(await memory.load(conversation_id)) == expected(range(2, 4))
    assert await redis.llen(key) == 4

    # Appending trims from the old end.
    total = await record(store, conversation_id, "q4", "a4")
    assert total
    await memory.append(conversation_id, [HumanMessage(content="q4"), AIMessage(content="a4")], total)
    assert await redis.llen(key) == 4
    assert records(await redis.lrange(key, 0, -1)) == [
        ("user", "q3"), ("assistant", "a3"), ("user", "q4"), ("assistant", "a4"),
    ]
    assert pairs(await memory.load(conversation_id)) == expected(range(3, 5))

    # A longer list than max_messages (e.g. written with a larger cap) is still read capped.
    await redis.lpush(key, orjson.dumps({"role": "user", "content": "old"}))
    assert pairs(await memory.load(conversation_id)) == expected(range(3, 5))
    await memory.forget(conversation_id)


async def test_redis_load_of_an_empty_conversation_writes_nothing(store, redis, prefix):
    memory = RedisMemory(redis, store, prefix=prefix)
    conversation = await store.create_conversation(app_id=APP)
    assert await memory.load(conversation.id) == []
    assert await redis.exists(memory.key(conversation.id)) == 0
    await memory.append(conversation.id, [], 0)
    assert await redis.exists(memory.key(conversation.id)) == 0


@pytest.mark.parametrize("cap", [3, 4, 100])
async def test_sql_memory_and_redis_memory_load_the_same_history(store, redis, prefix, cap):
    conversation_id = await conversation_with_turns(store, 3)
    sql = SqlMemory(store, max_messages=cap)
    cached = RedisMemory(redis, store, max_messages=cap, prefix=prefix)

    from_sql = await sql.load(conversation_id)
    assert pairs(from_sql) == expected(range(1, 4))[-cap:]
    assert [type(m) for m in await cached.load(conversation_id)] == [type(m) for m in from_sql]  # rebuilt
    assert pairs(await cached.load(conversation_id)) == pairs(from_sql)  # from the list
    await sql.ping()
    await cached.ping()
    await cached.forget(conversation_id)


async def test_sql_memory_of_unknown_conversation_is_empty(store):
    assert await SqlMemory(store).load("conv_missing") == []


# ---------------------------------------------------------------- the chat graph's memory window


def padded(label: str, tokens: int) -> str:
    """A text the approximate counter (3 bytes a token) counts as exactly ``tokens``."""
    return label.ljust(tokens * 3, ".")


# With the approximate counter each message is its tokens plus 4 of overhead; 10-token texts make 14.
TEXT_TOKENS = 10
MESSAGE_TOKENS = TEXT_TOKENS + 4


async def history_conversation(store: ConversationStore, turns: int) -> str:
    conversation = await store.create_conversation(app_id=APP)
    for n in range(1, turns + 1):
        assert await record(store, conversation.id, padded(f"q{n}", TEXT_TOKENS), padded(f"a{n}", TEXT_TOKENS))
    return conversation.id


def labels(messages: list[BaseMessage]) -> list[str]:
    return [m.text.rstrip(".") for m in messages]


@pytest.mark.parametrize(
    ("max_tokens", "kept"),
    [
        (10_000, ["q1", "a1", "q2", "a2", "q3", "a3"]),
        # Overflowed at the third turn: the oldest turns go in a block, leaving half the budget (graphs/chat/
        # history_window.py), so that the next turns keep the same prompt prefix.
        (4 * MESSAGE_TOKENS, ["q3", "a3"]),
        (6 * MESSAGE_TOKENS, ["q1", "a1", "q2", "a2", "q3", "a3"]),
        # Three messages would fit (a2, q3, a3), but the window starts on a user message.
        (3 * MESSAGE_TOKENS + 5, ["q3", "a3"]),
        (2 * MESSAGE_TOKENS, ["q3", "a3"]),
        # Only the newest answer fits: no user message to start on, so no history.
        (MESSAGE_TOKENS, []),
    ],
)
@pytest.mark.parametrize("memory_kind", ["sql", "redis"])
async def test_load_memory_keeps_the_newest_turns_within_memory_max_tokens(
    store, redis, prefix, memory_kind, max_tokens, kept
):
    conversation_id = await history_conversation(store, 3)
    memory = SqlMemory(store) if memory_kind == "sql" else RedisMemory(redis, store, prefix=prefix)
    registry, fake = fake_registry()
    graph = chat_graph(models=registry, store=store, memory=memory, system_prompt="Be brief.", memory_max_tokens=max_tokens)

    new = padded("q4", TEXT_TOKENS)
    result = await graph(
        {
            "app_id": APP,
            "messages": [HumanMessage(content=new)],
            "model": "fake",
            "conversation_id": conversation_id,
            "params": {},
        }
    )

    [prompt] = fake.received
    assert isinstance(prompt[0], SystemMessage) and prompt[0].text == "Be brief."
    assert labels(prompt[1:-1]) == kept
    assert [m.type for m in prompt[1:-1]] == ["human", "ai"] * (len(kept) // 2)
    assert prompt[-1].type == "human" and prompt[-1].text == new
    assert labels(result["history"]) == kept
    # The system prompt "Be brief." is 3 tokens, each other message 14.
    assert result["prompt_tokens"] == (3 + 4) + MESSAGE_TOKENS * (len(kept) + 1)
    assert result["answer"].text == "fake answer"

    # The turn was stored after the history.
    rows = await store.messages(conversation_id)
    assert [r.role for r in rows[-2:]] == ["user", "assistant"]
    assert [r.content for r in rows[-2:]] == [new, "fake answer"]
    await memory.forget(conversation_id)


async def test_load_memory_window_is_bounded_by_the_room_left_in_the_context(store):
    conversation_id = await history_conversation(store, 3)
    # 100 tokens of context, 40 kept for the answer, 14 for the new message: 46 left, three messages' worth,
    # less than memory_max_tokens.
    registry, fake = fake_registry(context_window=100, max_output_tokens=40)
    graph = chat_graph(models=registry, store=store, memory=SqlMemory(store), memory_max_tokens=10_000)
    await graph(
        {"app_id": APP, "messages": [HumanMessage(content=padded("q4", TEXT_TOKENS))], "conversation_id": conversation_id}
    )
    [prompt] = fake.received
    assert labels(prompt) == ["q3", "a3", "q4"]  # no system prompt configured


async def test_redis_list_holds_the_turns_the_graph_ran(store, redis, prefix):
    memory = RedisMemory(redis, store, ttl_seconds=600, prefix=prefix)
    registry, fake = fake_registry()
    graph = chat_graph(models=registry, store=store, memory=memory)

    first = await graph({"app_id": APP, "messages": [HumanMessage(content="hello")], "conversation_id": "new"})
    conversation_id = first["conversation_id"]
    assert conversation_id.startswith("conv_") and first["created_conversation"] is True
    assert (await store.get_conversation(conversation_id, app_id=APP)).title == "hello"
    second = await graph(
        {"app_id": APP, "messages": [HumanMessage(content="again")], "conversation_id": conversation_id}
    )

    # The second prompt carried the first turn.
    assert pairs(fake.received[1]) == [("human", "hello"), ("ai", "fake answer"), ("human", "again")]
    assert second["conversation_id"] == conversation_id
    key = memory.key(conversation_id)
    assert records(await redis.lrange(key, 0, -1)) == [
        ("user", "hello"), ("assistant", "fake answer"), ("user", "again"), ("assistant", "fake answer"),
    ]
    assert 590 <= await redis.ttl(key) <= 600
    assert pairs(await memory.load(conversation_id)) == pairs(await SqlMemory(store).load(conversation_id))
    await memory.forget(conversation_id)


async def test_graph_on_unknown_conversation_is_not_found_before_the_model(store):
    registry, fake = fake_registry()
    graph = chat_graph(models=registry, store=store, memory=SqlMemory(store))
    with pytest.raises(NotFound) as info:
        await graph({"app_id": APP, "messages": [HumanMessage(content="hi")], "conversation_id": "conv_missing"})
    assert info.value.param == "conversation_id"

    # Another app's conversation is just as unknown.
    conversation = await store.create_conversation(app_id=APP)
    with pytest.raises(NotFound):
        await graph(
            {"app_id": "app_someone_else", "messages": [HumanMessage(content="hi")], "conversation_id": conversation.id}
        )
    # And a call with no app is refused.
    with pytest.raises(InvalidRequest):
        await graph({"messages": [HumanMessage(content="hi")]})
    assert fake.received == []


# ---------------------------------------------------------------- the context-length check


async def test_context_length_exceeded_when_messages_and_max_tokens_overflow_the_window(db, store):
    # 100 tokens of context minus 40 for the answer leaves 60 for the messages.
    registry, fake = fake_registry(context_window=100, max_output_tokens=40)
    graph = chat_graph(models=registry, store=store, memory=SqlMemory(store), system_prompt="S")

    fits = [HumanMessage(content=padded("fits", 60 - 4 - (1 + 4)))]  # system "S" is 1 + 4
    await graph({"app_id": APP, "messages": fits, "params": {}})
    assert len(fake.received) == 1

    too_long = [HumanMessage(content=padded("long", 60 - 4 - (1 + 4) + 1))]
    with pytest.raises(ContextLengthExceeded) as info:
        await graph({"app_id": APP, "messages": too_long, "conversation_id": "new"})
    error = info.value
    assert error.status_code == 400 and error.code == "context_length_exceeded" and error.param == "messages"
    assert "maximum context length is 100 tokens" in error.message
    assert "requested 101 tokens (61 in the messages, 40 in the completion)" in error.message
    assert len(fake.received) == 1  # the model was not called
    await store.db.writer.flush()  # the stateless turn's usage record is buffered (storage/writer.py)
    assert await count(db, Message) == 0 and await count(db, Usage) == 1  # only the first, stateless turn

    # A smaller max_tokens leaves room for the same messages.
    result = await graph({"app_id": APP, "messages": too_long, "params": {"max_tokens": 39}})
    assert result["prompt_tokens"] == 61
    assert len(fake.received) == 2

    # max_tokens above the route's cap is capped before the check.
    with pytest.raises(ContextLengthExceeded):
        await graph({"app_id": APP, "messages": too_long, "params": {"max_tokens": 1000}})


async def test_redis_rebuild_racing_a_turn_or_a_delete_does_not_cache_a_stale_copy(store, redis, prefix):
    """A rebuild reads the database, then writes Redis; a turn or a delete in between must win."""
    memory = RedisMemory(redis, store, prefix=prefix)
    conversation = await store.create_conversation(app_id=APP)
    key, stale = memory.key(conversation.id), memory.stale_key(conversation.id)
    try:
        # The rows a rebuild read before the turns below.
        old_rows = [orjson.dumps({"role": r, "content": c}) for r, c in [("user", "q1"), ("assistant", "a1")]]
        # Another turn commits and appends while the list is missing: it marks the conversation stale...
        await memory.append(conversation.id, [from_record("user", "q2"), from_record("assistant", "a2")], 4)
        # ...so the racing rebuild, holding the rows it read before that turn, writes nothing.
        assert await memory._rebuild(keys=[key, stale], args=[60, *old_rows]) == 0
        assert await redis.exists(key) == 0

        await redis.delete(stale)
        await memory.forget(conversation.id)  # a delete marks it stale too
        assert await memory._rebuild(keys=[key, stale], args=[60, *old_rows]) == 0
        assert await redis.exists(key) == 0

        # A list that holds other than the messages before a turn (an old copy) is dropped, not extended.
        await redis.delete(stale)
        assert await memory._rebuild(keys=[key, stale], args=[60, *old_rows]) == 1
        await memory.append(conversation.id, [from_record("user", "q3"), from_record("assistant", "a3")], 6)
        assert await redis.exists(key) == 0
    finally:
        await redis.delete(key, stale)
