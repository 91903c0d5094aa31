"""Vector stores and the files attached to them: the SQL side of the knowledge base (chunks live in Chroma).

A store's ``content_version`` grows on every change of its content (a file's ingestion completed, a file detached or
deleted): keyword indexes and cached answers keyed by an older version are stale. Every query is scoped to the
caller's app; what belongs to another app is a 404 like what does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from errors import NotFound
from storage.engine import Database
from storage.pagination import Cursor, Order, Page, fetch_page, new_id
from storage.tables import App, VectorStore, VectorStoreFile, now

STATUSES = ("in_progress", "completed", "failed", "cancelled")


def new_vector_store_id() -> str:
    return new_id("vs_")


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    usage_bytes: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled


def _store_not_found(store_id: str, param: str = "vector_store_id") -> NotFound:
    return NotFound(f"No vector store found with id '{store_id}'.", param=param)


class VectorStores:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ stores

    async def create(self, app_id: str, *, name: str | None, metadata: dict[str, str] | None) -> VectorStore:
        stamp = now()
        store = VectorStore(
            id=new_vector_store_id(),
            app_id=app_id,
            name=name,
            meta=metadata or {},
            content_version=0,
            created_at=stamp,
            last_active_at=stamp,
        )
        async with self.db.session() as session, session.begin():
            session.add(store)
        return store

    async def get(self, app_id: str, store_id: str, *, param: str = "vector_store_id") -> VectorStore:
        async with self.db.session() as session:
            store = await session.scalar(
                select(VectorStore).where(VectorStore.id == store_id, VectorStore.app_id == app_id)
            )
        if store is None:
            raise _store_not_found(store_id, param)
        return store

    async def list(
        self,
        app_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> Page[VectorStore]:
        cursor = None
        if after is not None or before is not None:
            anchor = await self.get(app_id, after or before, param="after" if after else "before")
            cursor = Cursor(anchor.created_at, anchor.id, before=after is None)
        query = select(VectorStore).where(VectorStore.app_id == app_id)
        async with self.db.session() as session:
            return await fetch_page(
                session, query, VectorStore.created_at, VectorStore.id, limit=limit, order=order, cursor=cursor
            )

    async def update(self, app_id: str, store_id: str, **changes: Any) -> VectorStore:
        if changes:
            async with self.db.session() as session, session.begin():
                result = await session.execute(
                    update(VectorStore)
                    .where(VectorStore.id == store_id, VectorStore.app_id == app_id)
                    .values(**changes)
                )
            if result.rowcount == 0:
                raise _store_not_found(store_id)
        return await self.get(app_id, store_id)

    async def touch(self, app_id: str, store_id: str) -> None:
        """Mark the store used (``last_active_at``), e.g. by a search."""
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(VectorStore)
                .where(VectorStore.id == store_id, VectorStore.app_id == app_id)
                .values(last_active_at=now())
            )

    async def delete(self, app_id: str, store_id: str) -> None:
        """Remove the store and its attachments; the app's default store is unset when it was this one."""
        async with self.db.session() as session, session.begin():
            await session.execute(
                delete(VectorStoreFile).where(
                    VectorStoreFile.vector_store_id == store_id, VectorStoreFile.app_id == app_id
                )
            )
            result = await session.execute(
                delete(VectorStore).where(VectorStore.id == store_id, VectorStore.app_id == app_id)
            )
            await session.execute(
                update(App)
                .where(App.id == app_id, App.default_vector_store_id == store_id)
                .values(default_vector_store_id=None)
            )
        if result.rowcount == 0:
            raise _store_not_found(store_id)

    async def bump(self, app_id: str, store_ids: Sequence[str]) -> None:
        """A change of content: the stores' keyword indexes and cached answers are stale."""
        if not store_ids:
            return
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(VectorStore)
                .where(VectorStore.id.in_(list(store_ids)), VectorStore.app_id == app_id)
                .values(content_version=VectorStore.content_version + 1, last_active_at=now())
            )

    async def file_counts(self, app_id: str, store_ids: Sequence[str]) -> dict[str, FileCounts]:
        """Each store's files by status, and the bytes its completed files use."""
        columns = [
            func.coalesce(func.sum(case((VectorStoreFile.status == status, 1), else_=0)), 0) for status in STATUSES
        ]
        query = (
            select(VectorStoreFile.vector_store_id, *columns, func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0))
            .where(VectorStoreFile.app_id == app_id, VectorStoreFile.vector_store_id.in_(list(store_ids)))
            .group_by(VectorStoreFile.vector_store_id)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        counts = {store_id: FileCounts() for store_id in store_ids}
        for store_id, *numbers in rows:
            counts[store_id] = FileCounts(*(int(n) for n in numbers))
        return counts

    # ------------------------------------------------------------------ the app's default store

    async def default_store(self, app_id: str) -> str | None:
        async with self.db.engine.connect() as conn:
            return await conn.scalar(select(App.default_vector_store_id).where(App.id == app_id))

    async def set_default(self, app_id: str, store_id: str, default: bool) -> None:
        """Make the store the app's default (``default``), or stop it being the default when it is."""
        query = update(App).where(App.id == app_id)
        if default:
            query = query.values(default_vector_store_id=store_id)
        else:
            query = query.where(App.default_vector_store_id == store_id).values(default_vector_store_id=None)
        async with self.db.session() as session, session.begin():
            await session.execute(query)

    # ------------------------------------------------------------------ files in stores

    async def attach(self, app_id: str, store_id: str, file_id: str) -> VectorStoreFile:
        """Attach a file (again): its ingestion starts over, ``in_progress``."""
        try:
            async with self.db.session() as session, session.begin():
                result = await session.execute(
                    update(VectorStoreFile)
                    .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)
                    .where(VectorStoreFile.app_id == app_id)
                    .values(status="in_progress", last_error=None)
                )
                if result.rowcount == 0:
                    session.add(
                        VectorStoreFile(
                            vector_store_id=store_id,
                            file_id=file_id,
                            app_id=app_id,
                            status="in_progress",
                            last_error=None,
                            chunks=0,
                            usage_bytes=0,
                            created_at=now(),
                        )
                    )
        except IntegrityError:  # another request attached it first: that row stands, in progress
            pass
        return await self.get_file(app_id, store_id, file_id)

    async def get_file(self, app_id: str, store_id: str, file_id: str) -> VectorStoreFile:
        async with self.db.session() as session:
            row = await session.scalar(
                select(VectorStoreFile).where(
                    VectorStoreFile.vector_store_id == store_id,
                    VectorStoreFile.file_id == file_id,
                    VectorStoreFile.app_id == app_id,
                )
            )
        if row is None:
            raise NotFound(f"No file found with id '{file_id}' in vector store '{store_id}'.", param="file_id")
        return row

    async def list_files(
        self,
        app_id: str,
        store_id: str,
        *,
        status: str | None = None,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> Page[VectorStoreFile]:
        cursor = None
        if after is not None or before is not None:
            try:
                anchor = await self.get_file(app_id, store_id, after or before)
            except NotFound:
                raise NotFound(
                    f"No file found with id '{after or before}' in vector store '{store_id}'.",
                    param="after" if after else "before",
                ) from None
            cursor = Cursor(anchor.created_at, anchor.file_id, before=after is None)
        query = select(VectorStoreFile).where(
            VectorStoreFile.vector_store_id == store_id, VectorStoreFile.app_id == app_id
        )
        if status is not None:
            query = query.where(VectorStoreFile.status == status)
        async with self.db.session() as session:
            return await fetch_page(
                session,
                query,
                VectorStoreFile.created_at,
                VectorStoreFile.file_id,
                limit=limit,
                order=order,
                cursor=cursor,
            )

    async def finish(
        self,
        app_id: str,
        store_id: str,
        file_id: str,
        *,
        status: str,
        chunks: int = 0,
        usage_bytes: int = 0,
        last_error: dict[str, str] | None = None,
    ) -> bool:
        """Record the end of an ingestion (and bump the store's version when it completed). False when the file is
        no longer attached: it was detached or deleted meanwhile, and the caller removes what it added."""
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(VectorStoreFile)
                .where(
                    VectorStoreFile.vector_store_id == store_id,
                    VectorStoreFile.file_id == file_id,
                    VectorStoreFile.app_id == app_id,
                )
                .values(status=status, chunks=chunks, usage_bytes=usage_bytes, last_error=last_error)
            )
            if result.rowcount and status == "completed":
                await session.execute(
                    update(VectorStore)
                    .where(VectorStore.id == store_id, VectorStore.app_id == app_id)
                    .values(content_version=VectorStore.content_version + 1, last_active_at=now())
                )
        return bool(result.rowcount)

    async def detach(self, app_id: str, store_id: str, file_id: str) -> None:
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                delete(VectorStoreFile).where(
                    VectorStoreFile.vector_store_id == store_id,
                    VectorStoreFile.file_id == file_id,
                    VectorStoreFile.app_id == app_id,
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"No file found with id '{file_id}' in vector store '{store_id}'.", param="file_id")

    async def stores_of_file(self, app_id: str, file_id: str) -> list[str]:
        query = select(VectorStoreFile.vector_store_id).where(
            VectorStoreFile.file_id == file_id, VectorStoreFile.app_id == app_id
        )
        async with self.db.engine.connect() as conn:
            return list((await conn.scalars(query)).all())

    async def attached_files(self, app_id: str, store_ids: Sequence[str]) -> set[str]:
        """The ids of the files attached to the stores (whatever their status)."""
        query = select(VectorStoreFile.file_id).where(
            VectorStoreFile.vector_store_id.in_(list(store_ids)), VectorStoreFile.app_id == app_id
        )
        async with self.db.engine.connect() as conn:
            return set((await conn.scalars(query)).all())

    async def detach_everywhere(self, app_id: str, file_id: str) -> list[str]:
        """Detach a file from every store of the app; the stores it was in."""
        async with self.db.session() as session, session.begin():
            store_ids = list(
                (
                    await session.scalars(
                        select(VectorStoreFile.vector_store_id).where(
                            VectorStoreFile.file_id == file_id, VectorStoreFile.app_id == app_id
                        )
                    )
                ).all()
            )
            await session.execute(
                delete(VectorStoreFile).where(VectorStoreFile.file_id == file_id, VectorStoreFile.app_id == app_id)
            )
        return store_ids
