"""The process's one SQL writer (storage/writer.py): group commit of turns, batched usage records, on SQLite and
PostgreSQL (the ``db`` fixture runs each test on both)."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from langchain_core.messages import HumanMessage
from sqlalchemy import func, select, text

from storage import ConversationStore
from storage.engine import Database
from storage.tables import Conversation, Message, Usage
from storage.transcripts import TurnRecord, usage_row
from storage.writer import Writer

APP = "app_writer"


def turn(conversation_id: str | None, question: str = "q", **kwargs) -> TurnRecord:
    return TurnRecord(
        response_id=f"chatcmpl-{uuid.uuid4().hex}",
        app_id=APP,
        model="m",
        prompt_tokens=3,
        completion_tokens=2,
        latency_ms=1.0,
        conversation_id=conversation_id,
        create_conversation=conversation_id is not None,
        new_messages=[HumanMessage(content=question)],
        answer="a",
        finish_reason="stop",
        **kwargs,
    )


async def count(db: Database, table, *where) -> int:
    async with db.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table).where(*where))


async def test_concurrent_turns_share_one_commit(db: Database):
    """Turns queued while the writer is busy go out together in one transaction, each caller getting its result."""
    store = ConversationStore(db)
    await store.record_turn(turn(f"conv_{uuid.uuid4().hex}"))  # the writer is running, waiting for work
    before = db.writer.batches
    turns = [turn(f"conv_{uuid.uuid4().hex}", f"question {i}") for i in range(20)]
    # All 20 are queued before the writer's next turn on the event loop.
    assert await asyncio.gather(*(store.record_turn(t) for t in turns)) == [2] * 20  # each turn's own count
    assert db.writer.batches - before == 1
    assert await count(db, Message) == 42
    await db.writer.flush()  # the turns' usage records were buffered once they were committed
    assert await count(db, Usage) == 21


async def test_a_continued_turn_counts_the_conversations_messages(db: Database):
    store = ConversationStore(db)
    conversation_id = f"conv_{uuid.uuid4().hex}"
    assert await store.record_turn(turn(conversation_id)) == 2
    follow = turn(conversation_id, "again")
    follow.create_conversation = False
    assert await store.record_turn(follow) == 4
    await store.delete_conversation(conversation_id, app_id=APP)
    gone = turn(conversation_id, "after the delete")
    gone.create_conversation = False
    assert await store.record_turn(gone) == 0  # not kept; its usage record is
    assert await count(db, Message) == 0
    await db.writer.flush()
    assert await count(db, Usage, Usage.response_id == gone.response_id) == 1


async def test_a_failing_turn_fails_only_its_caller(db: Database):
    store = ConversationStore(db)
    taken = f"conv_{uuid.uuid4().hex}"
    await store.record_turn(turn(taken))
    before = db.writer.batches
    good = [store.record_turn(turn(f"conv_{uuid.uuid4().hex}")) for _ in range(3)]
    duplicate = store.record_turn(turn(taken))  # creates a conversation that exists: fails
    results = await asyncio.gather(*good, duplicate, return_exceptions=True)
    assert results[:3] == [2, 2, 2]
    assert isinstance(results[3], Exception) and re.search("(?i)unique|duplicate", str(results[3]))
    assert db.writer.batches - before == 3  # the batch failed; each good turn was then written alone
    assert await count(db, Conversation) == 4
    assert await count(db, Message) == 8


async def test_usage_records_are_buffered_then_written(db_url: str, db: Database):
    """A usage-only record is not written at once, is by flush, and by itself within the flush interval."""
    slow = Database(db_url, usage_flush_seconds=60)
    try:
        record = turn(None)
        assert await ConversationStore(slow).record_turn(record) == 0
        await asyncio.sleep(0.2)
        assert await count(db, Usage, Usage.response_id == record.response_id) == 0
        await slow.writer.flush()
        assert await count(db, Usage, Usage.response_id == record.response_id) == 1
    finally:
        await slow.close()

    quick = Database(db_url, usage_flush_seconds=0.05)
    try:
        records = [turn(None) for _ in range(50)]
        for record in records:
            await ConversationStore(quick).record_turn(record)
        for _ in range(100):
            if await count(db, Usage) == 51:
                break
            await asyncio.sleep(0.05)
        assert await count(db, Usage) == 51
        assert quick.writer.batches == 1  # the 50 records recorded at once went out together
    finally:
        await quick.close()


async def test_close_writes_what_is_buffered(db_url: str, db: Database):
    other = Database(db_url, usage_flush_seconds=60)
    records = [turn(None) for _ in range(5)]
    for record in records:
        await ConversationStore(other).record_turn(record)
    await other.close()
    assert await count(db, Usage) == 5


async def test_a_turn_whose_caller_is_cancelled_is_still_stored_whole(db: Database):
    store = ConversationStore(db)
    await store.record_turn(turn(f"conv_{uuid.uuid4().hex}"))
    conversation_id = f"conv_{uuid.uuid4().hex}"
    caller = asyncio.create_task(store.record_turn(turn(conversation_id)))
    await asyncio.sleep(0)  # the caller queues its turn and waits
    caller.cancel()
    await db.writer.flush()
    assert caller.cancelled()
    assert await count(db, Message, Message.conversation_id == conversation_id) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_usage_records_wait_while_the_database_refuses_them(db: Database, caplog):
    """While the usage table cannot be written, the records stay in memory and are written once it can."""
    writer = Writer(db, flush_seconds=0.05)
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE usage RENAME TO usage_away"))
    try:
        rows = [usage_row(turn(None), 1) for _ in range(3)]
        for row in rows:
            writer.record_usage(row)
        await asyncio.sleep(0.3)  # several attempts fail
        assert len(writer._usage) == 3
        assert "could not write usage records" in caplog.text
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE usage_away RENAME TO usage"))
    for _ in range(100):
        if await count(db, Usage) == 3:
            break
        await asyncio.sleep(0.05)
    assert await count(db, Usage) == 3
    await writer.close()
