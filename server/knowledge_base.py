"""The knowledge base's operations that touch the database and Chroma together, and the background ingestions.

Attaching a file answers at once (``in_progress``); its ingestion (``graphs.ingest``) runs as a task of this object,
one at a time per (store, file) in a process, so a file attached again while it is being ingested is ingested once
more after, never twice at the same moment. ``close`` gives running ingestions a few seconds, then cancels them:
they end ``failed`` with a message saying to attach the file again.

Removing content deletes its chunks from Chroma first (a Chroma that is down fails the request before anything
changed), then the rows, then the chunks once more: an ingestion finishing between the two would otherwise leave
chunks no row points at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from langchain_core.embeddings import Embeddings

from graphs.ingest import ChunkIndex, IngestContext, IngestInput, build_ingest_graph
from storage.files import FileStore
from storage.tables import VectorStoreFile
from storage.vector_stores import VectorStores

log = logging.getLogger(__name__)

INTERRUPTED = {
    "code": "server_error",
    "message": "Ingestion was interrupted: the server stopped. Attach the file again.",
}


class KnowledgeBase:
    def __init__(
        self,
        files: FileStore,
        vector_stores: VectorStores,
        knowledge: ChunkIndex,
        embeddings: Embeddings,
        *,
        chunk_size: int,
        chunk_overlap: int,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.files = files
        self.vector_stores = vector_stores
        self.knowledge = knowledge
        self.graph = build_ingest_graph()
        self.context = IngestContext(
            files=files,
            vector_stores=vector_stores,
            knowledge=knowledge,
            embeddings=embeddings,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
        )
        self.shutdown_grace = shutdown_grace
        self._latest: dict[tuple[str, str], asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ ingestion

    async def attach(self, app_id: str, store_id: str, file_id: str) -> VectorStoreFile:
        """Attach a file (the caller checked that the store and the file are the app's) and start its ingestion."""
        attached = await self.vector_stores.attach(app_id, store_id, file_id)
        self.ingest(IngestInput(app_id=app_id, store_id=store_id, file_id=file_id))
        return attached

    def ingest(self, job: IngestInput) -> asyncio.Task:
        key = (job["store_id"], job["file_id"])
        task = asyncio.get_running_loop().create_task(self._run(job, self._latest.get(key)))
        self._latest[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._settled(key, done))
        return task

    async def _run(self, job: IngestInput, previous: asyncio.Task | None) -> None:
        if previous is not None:  # the same file into the same store: after the ingestion already running
            await asyncio.wait([previous])
        try:
            result = await self.graph.ainvoke(job, context=self.context)
            log.info(
                "ingested %s into %s: %s", job["file_id"], job["store_id"], result.get("status"),
                extra={"app": job["app_id"], "chunks": len(result.get("chunks") or ())},
            )  # fmt: skip
        except asyncio.CancelledError:
            await asyncio.shield(self._record_failure(job, INTERRUPTED))
            raise
        except Exception:
            log.exception("ingesting %s into %s failed", job["file_id"], job["store_id"])
            await self._record_failure(job, {"code": "server_error", "message": "Ingestion failed on the server."})

    async def _record_failure(self, job: IngestInput, error: dict[str, str]) -> None:
        try:
            await self.vector_stores.finish(
                job["app_id"], job["store_id"], job["file_id"], status="failed", last_error=error
            )
            await self.files.set_status(job["app_id"], job["file_id"], "error", error["message"])
        except Exception:
            log.exception("could not record the failed ingestion of %s", job["file_id"])

    def _settled(self, key: tuple[str, str], task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self._latest.get(key) is task:
            del self._latest[key]

    @property
    def running(self) -> int:
        """How many ingestions are running or waiting in this process."""
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for the running ingestions (at most ``timeout`` seconds); True when none is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        return not self._tasks

    async def close(self) -> None:
        """At shutdown: let ingestions finish for a few seconds, then cancel the rest (they are marked failed)."""
        if await self.drain(self.shutdown_grace):
            return
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ removal

    async def detach(self, app_id: str, store_id: str, file_id: str) -> None:
        await self.vector_stores.get_file(app_id, store_id, file_id)  # 404 before anything changes
        await self.knowledge.delete_file(store_id, file_id)
        await self.vector_stores.detach(app_id, store_id, file_id)
        await self._remove_chunks_again([store_id], file_id)
        await self.vector_stores.bump(app_id, [store_id])

    async def delete_file(self, app_id: str, file_id: str) -> None:
        """Take the file's chunks out of every store it is in (their versions grow), then its row and bytes."""
        await self.files.get(app_id, file_id)  # 404 before anything changes
        attached = await self.vector_stores.stores_of_file(app_id, file_id)
        for store_id in attached:
            await self.knowledge.delete_file(store_id, file_id)
        attached = sorted({*attached, *await self.vector_stores.detach_everywhere(app_id, file_id)})
        await self._remove_chunks_again(attached, file_id)
        await self.vector_stores.bump(app_id, attached)
        await self.files.delete(app_id, file_id)

    async def delete_store(self, app_id: str, store_id: str) -> None:
        await self.vector_stores.get(app_id, store_id)  # 404 before anything changes
        await self.knowledge.drop(store_id)
        await self.vector_stores.delete(app_id, store_id)

    async def _remove_chunks_again(self, store_ids: Sequence[str], file_id: str) -> None:
        for store_id in store_ids:
            try:
                await self.knowledge.delete_file(store_id, file_id)
            except Exception:  # the rows are gone already; searches skip chunks of files no longer attached
                log.exception("could not remove the chunks of %s from %s", file_id, store_id)
