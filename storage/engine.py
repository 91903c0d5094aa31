"""The SQL database: an async engine and its sessions, SQLite by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage import migrations
from storage.writer import Writer


class Database:
    def __init__(self, url: str, *, usage_flush_seconds: float = 0.2) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._ensure_sqlite_dir()
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # A connection attempt that hangs gives up after 5 s (asyncpg's default is 60): the client gets a 503.
            connect_args = {"timeout": 5} if url.startswith("postgresql+asyncpg") else {}
            self.engine = create_async_engine(
                url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
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
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; foreign keys make deletes cascade.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
