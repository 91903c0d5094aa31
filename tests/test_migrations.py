"""Schema migrations (storage.migrations) on real SQLite and PostgreSQL: an empty database, one made before
migrations existed, the models and the migrations agreeing, and many replicas starting at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from storage import Database
from storage.migrations import BASELINE, alembic_config, head
from storage.tables import Base
from tests.conftest import ADMIN_KEY, ROOT, genai_serve
from tests.postgres import fresh_postgres_database

TABLES = {
    "alembic_version", "apps", "api_keys", "conversations", "messages", "usage", "files", "vector_stores",
    "vector_store_files", "feedback", "stored_completions", "idempotency_keys", "images",
    "fine_tuning_jobs", "fine_tuning_events", "fine_tuning_checkpoints", "tuned_models", "server_processes",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with nothing in it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


def run(coroutine_factory):
    """Run ``coroutine_factory(db)`` on a fresh ``Database`` of ``url`` in a loop of its own."""

    async def go(url: str):
        db = Database(url)
        try:
            return await coroutine_factory(db)
        finally:
            await db.close()

    return go


async def schema_differences(db: Database) -> list:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))


async def table_names(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


def test_an_empty_database_is_upgraded_to_a_schema_equal_to_the_models(empty_url):
    async def check(db: Database):
        assert await db.schema_revision() is None
        assert await db.upgrade_schema() == head()
        assert await db.schema_revision() == head()
        assert await table_names(db) == TABLES
        assert await schema_differences(db) == []  # a model change without its migration fails here
        assert await db.upgrade_schema() == head()  # again: nothing to do

    asyncio.run(run(check)(empty_url))


def test_a_database_made_before_migrations_is_stamped_then_upgraded_with_its_rows(empty_url):
    async def check(db: Database):
        # What `create_all` made before migrations existed: the baseline's tables (revision 0001), no alembic_version.
        async with db.engine.begin() as conn:
            await conn.run_sync(_baseline_without_version)
            await conn.execute(text("INSERT INTO apps (id, name, created_at) VALUES ('app_old', 'old-app', 1)"))
        assert await db.schema_revision() is None
        assert await db.upgrade_schema() == head()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT name FROM apps"))).scalars().all() == ["old-app"]
        assert await schema_differences(db) == []

    asyncio.run(run(check)(empty_url))


def test_conversations_made_before_0010_get_their_message_count(empty_url):
    """0010 counts the messages of the conversations that exist (the turn's write keeps the count from then on)."""

    def upgrade_to(conn, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

    async def check(db: Database):
        async with db.engine.begin() as conn:
            await conn.run_sync(upgrade_to, "0009")
            for conversation, messages in (("conv_a", 3), ("conv_b", 0)):
                await conn.execute(
                    text(
                        "INSERT INTO conversations (id, app_id, metadata, created_at, updated_at) "
                        "VALUES (:id, 'app_1', '{}', 1, 1)"
                    ),
                    {"id": conversation},
                )
                for n in range(messages):
                    await conn.execute(
                        text(
                            "INSERT INTO messages (conversation_id, role, content, created_at) "
                            "VALUES (:id, 'user', :content, 1)"
                        ),
                        {"id": conversation, "content": f"m{n}"},
                    )
        assert await db.upgrade_schema() == head()
        async with db.engine.connect() as conn:
            counts = (await conn.execute(text("SELECT id, message_count FROM conversations ORDER BY id"))).all()
        assert [tuple(row) for row in counts] == [("conv_a", 3), ("conv_b", 0)]

    asyncio.run(run(check)(empty_url))


def _baseline_without_version(conn) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, BASELINE)
    conn.execute(text("DROP TABLE alembic_version"))


def test_many_upgrades_at_once_on_an_empty_database_all_succeed(empty_url):
    """Replicas starting together each run the upgrade; the lock lets one migrate and the others find it done."""
    results: list = []

    def one() -> None:
        try:
            results.append(asyncio.run(run(lambda db: db.upgrade_schema())(empty_url)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [head()] * 4


@pytest.mark.slow
def test_two_servers_started_at_once_on_an_empty_postgresql_database(tmp_path, llama):
    with fresh_postgres_database() as url:
        env = {
            **os.environ,
            "GENAI_DATABASE_URL": url,
            "GENAI_LOCAL_MODEL_URL": llama.base_url,
            "GENAI_ADMIN_KEY": ADMIN_KEY,
        }
        env.pop("GENAI_REDIS_URL", None)
        with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Both processes start at once; each context waits for its own server to answer.
            started = [
                pool.submit(
                    stack.enter_context,
                    genai_serve(env={**env, "GENAI_DATA_DIR": str(tmp_path / name)}, log_path=tmp_path / f"{name}.log"),
                )
                for name in ("a", "b")
            ]
            for future in started:
                _, base = future.result()
                response = httpx.get(f"{base}/admin/apps", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
                assert response.status_code == 200, response.text
        logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
        assert "Traceback" not in logs and "UniqueViolation" not in logs
        assert logs.count("database schema upgraded from revision none to") == 1
        current = subprocess.run(
            [sys.executable, "-m", "server", "db", "current"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert current.returncode == 0 and f"revision {head()} (up to date)" in current.stdout
