"""Schema migrations with Alembic, for SQLite and PostgreSQL alike.

``upgrade`` brings a database to the newest revision under a lock, so any
number of replicas (or workers) may start at once on an empty database: a
PostgreSQL advisory lock held by the migrating transaction, or an exclusive
file lock beside a SQLite file. Whoever gets the lock second finds the schema
at head and does nothing. ``genai serve`` (and every app start) runs it;
``genai db upgrade`` and ``genai db current`` run it and report by hand.

A database made before migrations existed (by ``create_all``) holds exactly
revision 0001: it is stamped at 0001, then upgraded like any other.

A schema change ships as a new file in ``versions/``: change ``storage/tables.py``,
then write the migration (``tests/test_migrations.py`` fails until the two agree).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

BASELINE = "0001"
# Any fixed 64-bit number, the same in every replica: the key of the PostgreSQL advisory lock.
ADVISORY_LOCK_KEY = 0x67656E6169  # "genai"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("storage") / "migrations"))
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, lock_path: Path | None = None) -> str:
    """Bring the database to the newest revision; returns it. ``lock_path``: the file lock for SQLite."""
    async with _file_lock(lock_path):
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision, None when it has none (empty, or made before migrations)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


def _upgrade(conn: Connection) -> str:
    if conn.dialect.name == "postgresql":
        # Held until this transaction ends; the whole upgrade is one transaction (PostgreSQL's DDL is transactional).
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    config = alembic_config()
    config.attributes["connection"] = conn
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables and "apps" in tables:
        command.stamp(config, BASELINE)  # made by create_all before migrations existed
        log.info("stamped a database made before migrations at revision %s", BASELINE)
    before = MigrationContext.configure(conn).get_current_revision()
    command.upgrade(config, "head")
    after = MigrationContext.configure(conn).get_current_revision()
    if after != before:
        log.info("database schema upgraded from revision %s to %s", before or "none", after)
    return after


@contextlib.asynccontextmanager
async def _file_lock(path: Path | None) -> AsyncIterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        # Waited for in a thread: the event loop (and other apps on it) keeps running meanwhile.
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)  # released on close, or when the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
