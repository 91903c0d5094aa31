"""The process's one writer to the SQL database: group commit for what must be durable, batches for usage records.

SQLite takes one writer at a time. Several pooled connections competing for its lock wait in its busy handler
(sleeps of up to 100 ms each), and that made the request path's tails (issue #14). So a process writes the request
path's rows through one task:

- ``commit(work)``: a conversation turn, stored images. The turn is committed before its caller returns, as
  before, but the turns queued while a commit runs share the next transaction (group commit).
- ``record_usage(row)``: a usage record, which no client waits for (a turn's too). It is buffered and written in
  a transaction of its own at most ``flush_seconds`` after it was recorded, with a ``flush``, and on a graceful stop
  (``close``).

A crash (SIGKILL, power loss) can lose the usage records of the last ``flush_seconds``, never a turn a client was
told about. While the database cannot be written, usage records wait in memory (at most ``max_buffered``, the
oldest dropped first, logged) and are written once it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

from storage.tables import Usage

if TYPE_CHECKING:
    from storage.engine import Database

log = logging.getLogger(__name__)

# Errors of a row, not of the database: the batch rolled back for sure, and the other rows can be written alone.
ROW_ERRORS = (IntegrityError, DataError, ProgrammingError)

# A sync function of a connection (storage/engine.py: one thread hop for all of a batch's statements on SQLite).
Work = Callable[[Connection], Any]


@dataclass
class _Pending:
    work: Work
    usage: dict[str, Any] | None = None  # its usage record, buffered once the work is committed
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Writer:
    def __init__(self, db: Database, *, flush_seconds: float = 0.2, max_buffered: int = 100_000) -> None:
        self.db = db
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self._pending: list[_Pending] = []
        self._usage: list[dict[str, Any]] = []
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._writing = False
        self._usage_since = 0.0  # time.monotonic() when the oldest buffered usage record came
        self._failing = False  # the last usage write failed: say so once, and once more when it works again
        self.batches = 0  # transactions written, for tests and benchmarks

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the writer runs on (None before its first write): where ``flush`` must be awaited."""
        return self._task.get_loop() if self._task is not None and not self._task.done() else None

    async def commit(self, work: Work, *, usage: dict[str, Any] | None = None) -> Any:
        """Run ``work(connection)`` in a transaction shared with the other writes queued meanwhile; return its
        result once that transaction is committed. A failing ``work`` fails its caller only (the others are
        written again without it). Runs to its end even when the caller is cancelled: a turn whose client left is
        stored whole or not at all, as before."""
        if self._closed:
            return (await self._transaction([work], [usage] if usage else []))[0]  # nothing buffers any more
        pending = _Pending(work, usage)
        self._pending.append(pending)
        self._wake()
        return await pending.done

    def record_usage(self, row: dict[str, Any]) -> None:
        """Buffer a row of ``usage``; written within ``flush_seconds``."""
        if self._closed:  # after close: the last requests of a stopping process still count
            asyncio.get_running_loop().create_task(self._write_usage_now([row]))
            return
        self._usage.append(row)
        if len(self._usage) == 1:
            self._usage_since = time.monotonic()
            self._wake()

    async def flush(self) -> None:
        """Write everything recorded so far (a usage report reads its own process's records)."""
        if self._usage or self._pending or self._writing:
            await self.commit(_nothing)

    async def close(self) -> None:
        """Write what is buffered, then stop the task; later writes go straight to the database."""
        with contextlib.suppress(Exception):
            await self.flush()
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._usage:  # what the database refused until the end
            log.error("%d usage records could not be written before the stop and are lost", len(self._usage))
            self._usage = []

    # ---------------------------------------------------------------- the writer task

    def _wake(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._event = asyncio.Event()
            self._task = loop.create_task(self._run(), name="sql-writer")
        assert self._event is not None
        self._event.set()

    async def _run(self) -> None:
        """Turns are written as soon as the writer is free (with those queued meanwhile). Buffered usage records go
        in a transaction of their own once the oldest has waited ``flush_seconds`` (off the turns' path: a turn's
        commit carries no more statements than its own), or with a flush, which someone awaits."""
        event = self._event
        assert event is not None
        while True:
            if not self._pending:
                due = self._usage_since + self.flush_seconds - time.monotonic() if self._usage else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), due if due is None else max(due, 0.0))
            event.clear()
            batch, self._pending = self._pending, []
            flush = any(pending.work is _nothing for pending in batch)
            usage: list[dict[str, Any]] = []
            if self._usage and (flush or time.monotonic() >= self._usage_since + self.flush_seconds):
                usage, self._usage = self._usage, []
            if batch or usage:
                self._writing = True
                try:
                    await self._write(batch, usage)
                finally:
                    self._writing = False

    async def _write(self, batch: list[_Pending], usage: list[dict[str, Any]]) -> None:
        try:
            results = await self._transaction([p.work for p in batch], usage)
        except Exception as exc:
            if len(batch) + bool(usage) <= 1 or not isinstance(exc, ROW_ERRORS):
                # Nothing to single out; or the database itself failed, maybe while committing: writing the turns
                # again could store them twice. Their callers hear of it (a 503), the usage records wait.
                self._settle(batch, error=exc)
                self._keep(usage, exc)
                return
            # One of them failed the batch (the transaction rolled back): write each alone, so only its own caller
            # hears of it.
            for pending in batch:
                try:
                    result = (await self._transaction([pending.work], []))[0]
                except Exception as alone:
                    self._settle([pending], error=alone)
                else:
                    self._settle([pending], results=[result])
            if usage:
                try:
                    await self._transaction([], usage)
                except Exception as alone:
                    self._keep(usage, alone)
        else:
            self._settle(batch, results=results)

    async def _transaction(self, works: list[Work], usage: list[dict[str, Any]]) -> list[Any]:
        def write(conn: Connection) -> list[Any]:
            results = [work(conn) for work in works]
            if usage:
                conn.execute(insert(Usage), usage)
            return results

        results = await self.db.transaction(write)
        self.batches += 1
        if usage and self._failing:
            self._failing = False
            log.warning("usage records are written again")
        return results

    async def _write_usage_now(self, rows: list[dict[str, Any]]) -> None:
        try:
            await self._transaction([], rows)
        except Exception:
            log.exception("could not write %d usage records", len(rows))

    def _settle(
        self, batch: list[_Pending], *, results: list[Any] | None = None, error: BaseException | None = None
    ) -> None:
        for index, pending in enumerate(batch):
            if error is None and pending.usage is not None:  # written: its usage record joins the buffer
                self.record_usage(pending.usage)
            if pending.done.done():  # its caller was cancelled; the write happened all the same
                continue
            if error is not None:
                pending.done.set_exception(error)
            else:
                pending.done.set_result(results[index] if results is not None else None)

    def _keep(self, usage: list[dict[str, Any]], exc: Exception) -> None:
        """Usage records the database refused: back in the buffer, written on a later attempt."""
        if not usage:
            return
        if not self._failing:
            self._failing = True
            log.warning("could not write usage records, will retry: %s: %s", type(exc).__name__, exc)
        self._usage[:0] = usage
        self._usage_since = time.monotonic()  # tried again a flush interval later
        if len(self._usage) > self.max_buffered:
            dropped = len(self._usage) - self.max_buffered
            del self._usage[:dropped]
            log.error("dropped the %d oldest usage records: the database has refused writes for too long", dropped)


def _nothing(_conn: Connection) -> None:
    return None
