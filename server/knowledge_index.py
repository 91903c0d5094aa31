"""The knowledge index, opened on first use: importing chromadb and opening its store takes seconds, and requests
that never touch the knowledge base (most chat requests) must not pay for it, nor must start-up.

``LazyKnowledgeIndex`` has ``KnowledgeIndex``'s methods (``add``, ``delete_file``, ``drop``, ``search``); the first call
opens Chroma in a worker thread (embedded in ``data_dir/chroma``, or the server at ``url``). A Chroma server that cannot
be reached is a 503, tried again on the next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from errors import ServiceUnavailable

if TYPE_CHECKING:
    from memory.knowledge import Chunk, Hit, KnowledgeIndex

log = logging.getLogger(__name__)


class LazyKnowledgeIndex:
    def __init__(self, data_dir: Path, url: str | None, embeddings: Embeddings) -> None:
        self.data_dir = data_dir
        self.url = url
        self.embeddings = embeddings
        self._index: KnowledgeIndex | None = None
        self._lock = asyncio.Lock()

    @property
    def opened(self) -> bool:
        return self._index is not None

    async def index(self) -> KnowledgeIndex:
        if self._index is None:
            async with self._lock:
                if self._index is None:
                    self._index = await asyncio.to_thread(self._open)
        return self._index

    def _open(self) -> KnowledgeIndex:
        from memory.chroma import open_chroma
        from memory.knowledge import KnowledgeIndex

        try:
            client = open_chroma(self.data_dir, self.url)
        except Exception as exc:  # chromadb says "Could not connect" with a ValueError, among others
            log.error("cannot open the knowledge store at %s: %s", self.url or self.data_dir / "chroma", exc)
            raise ServiceUnavailable("The knowledge store (Chroma) is unavailable right now; try again later.") from exc
        return KnowledgeIndex(client, self.embeddings)

    async def client(self) -> Any:
        """The Chroma client, opened on first use; the semantic cache keeps its collection there too."""
        return (await self.index()).client

    async def add(self, store_id: str, app_id: str, chunks: Sequence[Chunk], vectors: Any = None) -> None:
        await (await self.index()).add(store_id, app_id, chunks, vectors)

    async def delete_file(self, store_id: str, file_id: str) -> int:
        return await (await self.index()).delete_file(store_id, file_id)

    async def drop(self, store_id: str) -> None:
        await (await self.index()).drop(store_id)

    async def search(self, store_ids: Sequence[str], query: str, **options: Any) -> list[Hit]:
        """``KnowledgeIndex.search`` (options: ``vector``, ``versions``, ``k``, ``min_score``, ``mode``)."""
        return await (await self.index()).search(store_ids, query, **options)

    async def close(self) -> None:
        """Close the Chroma client, when it was opened (an embedded store flushes its files)."""
        index, self._index = self._index, None
        close = getattr(index.client, "close", None) if index is not None else None
        if close is not None:
            try:
                await asyncio.to_thread(close)
            except Exception:
                log.exception("closing the knowledge store failed")
