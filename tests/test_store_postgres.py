"""PostgreSQL specifics: the schema on a real PostgreSQL database (asyncpg), and a live server on it.

The transcript store and SQL memory tests run on PostgreSQL as well as on SQLite, from tests/test_memory.py
(the ``db`` fixture in tests/conftest.py: its ``db_url`` is parametrized over both engines).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from storage import ConversationStore, Database
from storage.migrations import head
from storage.tables import Usage
from tests.conftest import two_turns
from tests.test_memory import count


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_schema_is_upgraded_once_and_again(db):
    assert await db.upgrade_schema() == head()  # the fixture upgraded it already: nothing to do
    await db.ping()
    assert db.engine.dialect.name == "postgresql" and db.engine.driver == "asyncpg"
    async with db.engine.connect() as conn:
        tables = set(
            (await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars()
        )
    assert {"conversations", "messages", "usage"} <= tables


# ---------------------------------------------------------------- a live server on PostgreSQL


@pytest.mark.slow
def test_live_server_two_turn_conversation_on_postgres(live_server, postgres_url, llama):
    server = live_server(database_url=postgres_url)
    assert server.services.db.engine.dialect.name == "postgresql"
    first, second, conversation_id = two_turns(
        server.openai(), "What is the capital of France?", "And of Spain?", max_tokens=6, temperature=0
    )
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

    # The rows are in PostgreSQL, read back with a store of the test's own (the usage records written first).
    server.flush_writes()

    async def read_back():
        db = Database(postgres_url)
        try:
            rows = await ConversationStore(db).messages(conversation_id)
            usage = await count(db, Usage, Usage.conversation_id == conversation_id)
            return [(r.role, r.content) for r in rows], usage
        finally:
            await db.close()

    rows, usage = asyncio.run(read_back())
    assert rows == [(m["role"], m["content"]) for m in stored["messages"]]
    assert usage == 2
