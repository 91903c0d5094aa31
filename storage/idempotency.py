"""Idempotency keys of chat requests: a client that retries gets the reply of the request it repeats, never a
second turn.

A request with a key claims it (a row without a reply) before it runs. The turn's own transaction stores the
reply in that row (``ConversationStore.record_turn``), so the reply exists exactly when the turn does; a request
that fails releases its claim. A retry then finds the reply (replayed to it), a claim (409: the first request
still runs; unless the process running it died, ``storage.processes``: then the retry takes the key over), or
nothing (it runs, as the first did not leave a turn). Keys belong to their app; the same key with a different
request is refused.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import delete, insert, null, select, update
from sqlalchemy.exc import IntegrityError

from errors import Conflict, InvalidRequest
from storage.engine import Database
from storage.processes import PROCESS_ID, is_alive
from storage.tables import IdempotencyKey, now

# How long a key's reply is kept for retries.
KEEP_SECONDS = 24 * 3600
# A claim this old belongs to a process that died while it ran: the next request with its key takes it over. Sooner
# when the claim's process stopped renewing its heartbeat (storage.processes).
CLAIM_SECONDS = 15 * 60
MAX_KEY_LENGTH = 255
# How often (seconds) a process deletes the keys older than KEEP_SECONDS: clients send a new key with each request,
# so without it the table (each row holds a whole reply) would only grow.
PURGE_EVERY = 600


def fingerprint(request: Any) -> str:
    """A hash of the request, to tell a retry from another request that reuses its key."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


class IdempotencyKeys:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._next_purge = 0

    async def claim(
        self, app_id: str, key: str, fingerprint: str, response_id: str, *, header: str = "Idempotency-Key"
    ) -> dict[str, Any] | None:
        """Claim ``key`` (sent in the header ``header``) for the request ``response_id``; the stored reply instead
        when the request was answered already. 409 while another request with the key runs, 400 when the key came
        with another request."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequest(
                f"The {header} header must have 1 to {MAX_KEY_LENGTH} characters.",
                param=header,
                code="invalid_idempotency_key",
            )
        stamp = now()
        if stamp >= self._next_purge:
            self._next_purge = stamp + PURGE_EVERY
            await self.purge_expired(stamp)
        where = (IdempotencyKey.app_id == app_id, IdempotencyKey.key == key)
        try:
            async with self.db.engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(
                            IdempotencyKey.fingerprint,
                            IdempotencyKey.reply,
                            IdempotencyKey.created_at,
                            IdempotencyKey.owner,
                        ).where(*where)
                    )
                ).first()
                if row is None:
                    await conn.execute(
                        insert(IdempotencyKey).values(
                            app_id=app_id,
                            key=key,
                            fingerprint=fingerprint,
                            response_id=response_id,
                            created_at=stamp,
                            owner=PROCESS_ID,
                        )
                    )
                    return None
                expired = row.created_at < stamp - KEEP_SECONDS
                if not expired and row.fingerprint != fingerprint:
                    raise InvalidRequest(
                        f"This {header} was used with a different request; use a new one for a new request.",
                        param=header,
                        code="idempotency_key_reused",
                    )
                if not expired and row.reply is not None:
                    return row.reply
                if not expired and row.created_at >= stamp - CLAIM_SECONDS and await is_alive(conn, row.owner):
                    raise _in_use(header)
                # Expired, or left behind by a process that died: this request takes the key over.
                await conn.execute(
                    update(IdempotencyKey)
                    .where(*where, IdempotencyKey.created_at == row.created_at)
                    .values(
                        fingerprint=fingerprint, response_id=response_id, reply=null(), created_at=stamp, owner=PROCESS_ID
                    )
                )
                return None
        except IntegrityError:  # another request with the key claimed it a moment ago
            raise _in_use(header) from None

    async def purge_expired(self, stamp: int | None = None) -> int:
        """Delete the keys older than KEEP_SECONDS (every app's); how many. Done by ``claim`` every PURGE_EVERY
        seconds in each process (an indexed range delete: replicas doing it too cost next to nothing)."""
        cutoff = (stamp if stamp is not None else now()) - KEEP_SECONDS
        async with self.db.engine.begin() as conn:
            return (await conn.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))).rowcount

    async def release(self, app_id: str, key: str, response_id: str) -> None:
        """Give up the claim of a request that failed (left nothing behind): a retry runs afresh."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.app_id == app_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.response_id == response_id,
                    IdempotencyKey.reply.is_(None),
                )
            )


def _in_use(header: str) -> Conflict:
    return Conflict(
        f"A request with this {header} is still running; retry once it has finished.",
        param=header,
        code="idempotency_key_in_use",
    )
