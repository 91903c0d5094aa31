"""Corpora into vector stores in this process: the in-process target's ``ensure_store``.

A corpus directory becomes a vector store of the run's app named ``eval:<corpus>:<digest of its files>``; a later run
finds it by that name and reuses it while the corpus is unchanged and every file ingested. Over HTTP the same happens
through the API (``HttpTarget.ensure_store``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from evals.datasets import corpus_files, store_name

POLL_SECONDS = 0.2


class ServiceStores:
    """Corpora into vector stores of the caller's app, through the services' knowledge base (duck typed: ``files``,
    ``vector_stores``, ``knowledge_base``, as ``server.services.Services`` has them)."""

    def __init__(self, services: Any, app_id: str, *, timeout: float = 600.0) -> None:
        self.services = services
        self.app_id = app_id
        self.timeout = timeout

    async def ensure(self, corpus: str, directory: Path) -> str:
        from chains.document_loaders import detect_kind  # the upload route's check of a file's type

        name = store_name(corpus, directory)
        files = corpus_files(directory)
        existing = await self._find(name, len(files))
        if existing is not None:
            return existing
        store = await self.services.vector_stores.create(self.app_id, name=name, metadata={"corpus": corpus})
        for path in files:
            data = path.read_bytes()
            file = await self.services.files.create(
                app_id=self.app_id,
                filename=path.name,
                purpose="assistants",
                kind=detect_kind(path.name, data),
                data=data,
            )
            await self.services.knowledge_base.attach(self.app_id, store.id, file.id)
        deadline = time.monotonic() + self.timeout
        while True:
            counts = (await self.services.vector_stores.file_counts(self.app_id, [store.id]))[store.id]
            if not counts.in_progress:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"vector store {store.id} ({name}) still ingesting after {self.timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
        if counts.failed:
            raise RuntimeError(f"vector store {store.id} ({name}): {counts.failed} file(s) failed to ingest")
        return store.id

    async def _find(self, name: str, expected_files: int) -> str | None:
        after = None
        while True:
            page = await self.services.vector_stores.list(self.app_id, limit=100, after=after)
            matching = [store for store in page.items if store.name == name]
            if matching:
                counts = await self.services.vector_stores.file_counts(self.app_id, [s.id for s in matching])
                for store in matching:
                    c = counts[store.id]
                    if c.completed == expected_files and not c.failed and not c.in_progress:
                        return store.id
            if not page.has_more or not page.items:
                return None
            after = page.items[-1].id
