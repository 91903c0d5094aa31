"""The server processes alive on this database: each renews a heartbeat row while it runs.

A process that dies without stopping (SIGKILL, a crash, a lost machine) leaves behind what it held: an idempotency
key claimed by a request it was running (``storage.idempotency``) would refuse every retry of that request with 409
until the claim grew old (15 minutes). With the heartbeats, a retry that finds the claim of a process whose
heartbeat stopped more than ``STALE_SECONDS`` ago takes the key over at once, on whichever replica it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.engine import Database
from storage.tables import ServerProcess

log = logging.getLogger(__name__)

# This process, as its claims name it.
PROCESS_ID = uuid.uuid4().hex
HEARTBEAT_SECONDS = 2.0  # an UPDATE of one row through the writer: nothing next to the requests' writes
# A process whose heartbeat is older than this is taken for dead (four beats missed, and a margin).
STALE_SECONDS = 10.0
# Rows of processes gone this long are deleted (a process that stops removes its own).
FORGET_SECONDS = 24 * 3600.0


class ProcessRegistry:
    """This process's heartbeat row: written at ``start``, renewed every HEARTBEAT_SECONDS, deleted at ``stop``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(IntegrityError):  # another app of this process registered it that moment
            await self.db.writer.commit(self._register)
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="process-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):  # a database that is down forgets it by its stale heartbeat
                await self.db.writer.commit(self._unregister)

    async def _beat(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.db.writer.commit(self._renew)
            except Exception as error:  # noqa: BLE001 - the database is down: its own errors tell; go on beating
                if not failing:
                    log.warning("cannot renew this process's heartbeat: %s", error)
                failing = True
            else:
                failing = False

    @staticmethod
    def _register(conn: Connection) -> None:
        stamp = time.time()
        conn.execute(delete(ServerProcess).where(ServerProcess.heartbeat_at < stamp - FORGET_SECONDS))
        ProcessRegistry._renew(conn)

    @staticmethod
    def _renew(conn: Connection) -> None:
        """The heartbeat; the row written anew when it is missing (the first beat, a restored backup, or another app
        of this process that stopped: tests run several on one database)."""
        stamp = time.time()
        updated = conn.execute(update(ServerProcess).where(ServerProcess.id == PROCESS_ID).values(heartbeat_at=stamp))
        if updated.rowcount == 0:
            conn.execute(
                ServerProcess.__table__.insert().values(
                    id=PROCESS_ID,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=stamp,
                    heartbeat_at=stamp,
                )
            )

    @staticmethod
    def _unregister(conn: Connection) -> None:
        conn.execute(delete(ServerProcess).where(ServerProcess.id == PROCESS_ID))


async def is_alive(conn: AsyncConnection, process_id: str | None) -> bool:
    """Whether the process ``process_id`` renewed its heartbeat lately. A claim without an owner (made before
    owners were recorded) counts as alive: it keeps the old rule, its age."""
    if process_id is None or process_id == PROCESS_ID:
        return True
    beat = (
        await conn.execute(select(ServerProcess.heartbeat_at).where(ServerProcess.id == process_id))
    ).scalar_one_or_none()
    return beat is not None and beat >= time.time() - STALE_SECONDS
