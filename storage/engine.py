"""The SQL database: an async engine and its sessions, SQLite by default, any SQLAlchemy URL otherwise.

The request path's hot statements run as plain (sync) SQLAlchemy functions of a ``Connection`` through
``transaction`` and ``read``: on SQLite, in one thread hop for the whole function on a sync engine (aiosqlite makes
a hop of every statement, the BEGIN, the COMMIT and the pool's reset, about 0.3 ms each here); on other databases,
with ``AsyncConnection.run_sync`` on the async engine (SQLAlchemy's greenlet bridge, no thread at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage import migrations
from storage.writer import Writer

T = TypeVar("T")

# The writer's connection is checked out again (and pinged) after a pause this long (storage/writer.py).
WRITER_IDLE_SECONDS = 1.0


class Database:
    def __init__(
        self, url: str, *, usage_flush_seconds: float = 0.2, pool_size: int = 10, max_overflow: int = 20
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._read_engine: AsyncEngine | None = None
        if self.is_sqlite:
            self._ensure_sqlite_dir()
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # A connection attempt that hangs gives up after 5 s (asyncpg's default is 60): the client gets a 503.
            connect_args = {"timeout": 5} if url.startswith("postgresql+asyncpg") else {}
            # PostgreSQL's connections: pool_size kept open for transactions (the writer's among them), half as many for
            # reads, each engine up to max_overflow more under a burst (GENAI_DATABASE_POOL_SIZE, ..._MAX_OVERFLOW).
            self.engine = create_async_engine(
                url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, connect_args=connect_args
            )
            # The request path's reads (``read``): no ping before each (a round trip); a read that meets a connection
            # the database dropped is tried once more on a fresh one, which a read may safely be.
            self._read_engine = create_async_engine(
                url,
                pool_size=max(pool_size // 2, 1),
                max_overflow=max_overflow,
                connect_args=connect_args,
                isolation_level="AUTOCOMMIT",
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer_connection: AsyncConnection | None = None
        self._writer_used = 0.0  # time.monotonic() of its last transaction
        self._writer_lock = asyncio.Lock()
        # SQLite files: a sync engine beside the async one, its writes on one thread (the process's one writer).
        self.sync_engine: Engine | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        if self.sqlite_path is not None:
            self.sync_engine = create_engine(
                f"sqlite:///{self.sqlite_path}", connect_args={"timeout": 30, "check_same_thread": False}
            )
            event.listen(self.sync_engine, "connect", _sqlite_pragmas)
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        # The request path's writes (turns, images, usage records) go through this one writer (storage/writer.py).
        self.writer = Writer(self, flush_seconds=usage_flush_seconds)

    def _ensure_sqlite_dir(self) -> None:
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)

    def session(self) -> AsyncSession:
        return self.sessions()

    @property
    def sqlite_path(self) -> Path | None:
        path = self.url.split("///", 1)[-1] if self.is_sqlite else ""
        return Path(path) if path and path != ":memory:" else None

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction, committed when it returns (rolled back when it raises)."""
        if self.sync_engine is not None:  # after close (a stopping process's last writes): on any thread
            return await asyncio.get_running_loop().run_in_executor(self._write_thread, self._in_transaction, work)
        # The writer keeps its connection while it is busy: a checkout would cost a ping (pool_pre_ping) each time.
        # After a pause it checks one out again, pinged: a connection the database dropped meanwhile fails nothing.
        async with self._writer_lock:
            conn = self._writer_connection
            if conn is not None and (
                time.monotonic() - self._writer_used > WRITER_IDLE_SECONDS or await _is_closed(conn)
            ):
                await self._drop_writer_connection()
                conn = None
            if conn is None:
                conn = self._writer_connection = await self.engine.connect()
            try:
                async with conn.begin():
                    return await conn.run_sync(work)
            except BaseException:  # a broken or doubtful connection: the next transaction checks out a fresh one
                await self._drop_writer_connection()
                raise
            finally:
                self._writer_used = time.monotonic()

    async def _drop_writer_connection(self) -> None:
        conn, self._writer_connection = self._writer_connection, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` on a connection of its own, for reads (SQLite's readers run beside its writer)."""
        if self.sync_engine is not None:
            return await asyncio.get_running_loop().run_in_executor(None, self._on_connection, work)
        engine = self._read_engine or self.engine
        for attempt in (1, 2):
            try:
                # Autocommit: no BEGIN before the read and no ROLLBACK after it, two round trips fewer.
                async with engine.connect() as conn:
                    return await conn.run_sync(work)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        assert self.sync_engine is not None
        with self.sync_engine.begin() as conn:
            return work(conn)

    def _on_connection(self, work: Callable[[Connection], T]) -> T:
        assert self.sync_engine is not None
        with self.sync_engine.connect() as conn:
            return work(conn)

    async def upgrade_schema(self) -> str:
        """Migrate to the newest schema revision, under a lock that replicas starting at once share."""
        path = self.sqlite_path
        return await migrations.upgrade(self.engine, path.with_name(path.name + ".migrate.lock") if path else None)

    async def schema_revision(self) -> str | None:
        return await migrations.current(self.engine)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.writer.close()
        if self._write_thread is not None:
            self._write_thread.shutdown(wait=True)
            self._write_thread = None
        if self.sync_engine is not None:
            self.sync_engine.dispose()
        await self._drop_writer_connection()
        if self._read_engine is not None:
            await self._read_engine.dispose()
        await self.engine.dispose()


async def _is_closed(conn: AsyncConnection) -> bool:
    """Whether the driver knows its connection is gone (asyncpg's ``is_closed``: the socket closed), asked without a
    round trip."""
    raw = await conn.get_raw_connection()
    is_closed = getattr(raw.driver_connection, "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else False


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; foreign keys make deletes cascade.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
