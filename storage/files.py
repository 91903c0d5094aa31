"""Uploaded files: a row in ``files`` and the bytes under ``<data dir>/files/<app id>/<file id>``.

Every query is scoped to the caller's app: another app's file id is a 404, exactly like one that does not exist.
Bytes are written to a temporary name and renamed, so a crash never leaves a half-written file behind a row.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from sqlalchemy import delete, select, update

from errors import NotFound
from storage.engine import Database
from storage.pagination import Cursor, Order, Page, fetch_page, new_id
from storage.tables import File, now


def new_file_id() -> str:
    return new_id("file-")


class FileStore:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root

    def path_of(self, file: File) -> Path:
        return self.root / file.path

    async def create(self, *, app_id: str, filename: str, purpose: str, kind: str, data: bytes) -> File:
        file_id = new_file_id()
        relative = f"{app_id}/{file_id}"
        digest = await asyncio.to_thread(_write, self.root / relative, data)
        file = File(
            id=file_id,
            app_id=app_id,
            filename=filename,
            purpose=purpose,
            bytes=len(data),
            kind=kind,
            sha256=digest,
            path=relative,
            status="uploaded",
            status_details=None,
            created_at=now(),
        )
        try:
            async with self.db.session() as session, session.begin():
                session.add(file)
        except BaseException:
            await asyncio.to_thread(_unlink, self.root / relative)
            raise
        return file

    async def get(self, app_id: str, file_id: str, *, param: str = "file_id") -> File:
        async with self.db.session() as session:
            file = await session.scalar(select(File).where(File.id == file_id, File.app_id == app_id))
        if file is None:
            raise NotFound(f"No such File object: {file_id}", param=param)
        return file

    async def list(
        self,
        app_id: str,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
        after: str | None = None,
    ) -> Page[File]:
        query = select(File).where(File.app_id == app_id)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        cursor = None
        if after is not None:
            anchor = await self.get(app_id, after, param="after")
            cursor = Cursor(anchor.created_at, anchor.id)
        async with self.db.session() as session:
            return await fetch_page(session, query, File.created_at, File.id, limit=limit, order=order, cursor=cursor)

    async def read(self, file: File) -> bytes:
        try:
            return await asyncio.to_thread(self.path_of(file).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"The content of file {file.id} is gone (it was deleted).", param="file_id") from None

    async def set_status(self, app_id: str, file_id: str, status: str, details: str | None = None) -> None:
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(File)
                .where(File.id == file_id, File.app_id == app_id)
                .values(status=status, status_details=details)
            )

    async def delete(self, app_id: str, file_id: str) -> None:
        """Remove the row (its vector store attachments go with it) and then the bytes."""
        file = await self.get(app_id, file_id)
        async with self.db.session() as session, session.begin():
            result = await session.execute(delete(File).where(File.id == file_id, File.app_id == app_id))
        if result.rowcount == 0:  # deleted by a request running at the same time
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        await asyncio.to_thread(_unlink, self.path_of(file))


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return hashlib.sha256(data).hexdigest()


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
