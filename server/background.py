"""Work a client need not wait for (token charges, usage records of cancelled requests, cache stores), run after
its answer; the services that have such work share this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundWork:
    """``spawn`` runs bookkeeping without making the client wait; ``drain`` awaits what is left (at shutdown and in
    tests). ``work_name`` names it in the log when it fails."""

    work_name = "background bookkeeping"

    def __init__(self) -> None:
        self._background: set[asyncio.Task] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", self.work_name, exc_info=task.exception())

    @property
    def busy(self) -> bool:
        """Bookkeeping of finished requests is still running (tests wait for it to settle)."""
        return bool(self._background)

    async def drain(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
