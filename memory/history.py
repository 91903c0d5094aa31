"""Conversation memory: the prior turns a model sees, behind one interface.

``SqlMemory`` reads the transcript store directly. ``RedisMemory`` keeps each
conversation as a Redis list (plain structures, no modules) with a TTL, and
rebuilds an expired list from the database on the next read. While Redis is
unreachable it reads the database (the transcript is whole: turns are committed
there first), and drops, once Redis answers again, the lists of the conversations
whose turns it could not append, so that none is read back without them.

Both hand out at most ``max_messages`` messages, and once a conversation holds more, its oldest go in blocks
(``window_start``): a history whose start moved by one turn on every turn would change the model's prompt prefix
every turn, and a model server could never reuse the prefix it computed on the turn before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

import orjson
from langchain_core.messages import BaseMessage
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from memory.redis_client import Outage
from storage.message_records import from_record, row_record, to_record
from storage.tables import Conversation
from storage.transcripts import ConversationStore

# Once a conversation overflows ``max_messages``, memory keeps about this fraction of them (``memory_keep_fraction``).
KEEP_FRACTION = 0.5


def window_block(max_messages: int, keep_fraction: float = KEEP_FRACTION) -> int:
    """How many of the oldest messages go at a time once a conversation holds more than ``max_messages``."""
    return max(1, max_messages - math.ceil(max_messages * keep_fraction))


def window_start(total: int, max_messages: int, keep_fraction: float = KEEP_FRACTION) -> int:
    """Position (from the conversation's first message) of the oldest message memory hands out, of ``total``.

    0 while the conversation fits ``max_messages``; then a multiple of ``window_block``: the smallest that leaves at
    most ``max_messages``. It moves once every block, not on every turn, and depends on ``total`` only, so every
    worker hands out the same window.
    """
    if total <= max_messages:
        return 0
    block = window_block(max_messages, keep_fraction)
    return -(-(total - max_messages) // block) * block


async def window_rows(store: ConversationStore, conversation_id: str, max_messages: int, keep_fraction: float) -> list:
    """The rows of the conversation's memory window (``window_start``), oldest first."""
    rows = await store.messages(conversation_id, limit=max_messages)
    if len(rows) < max_messages:
        return rows  # the whole conversation
    async with store.db.session() as session:  # the count the turns' writes keep (storage/transcripts.py)
        total = await session.scalar(select(Conversation.message_count).where(Conversation.id == conversation_id))
    total = total or 0
    kept = min(max(total - window_start(total, max_messages, keep_fraction), 0), len(rows))
    return rows[len(rows) - kept :]


class ConversationMemory(Protocol):
    async def load(self, conversation_id: str) -> list[BaseMessage]:
        """The newest prior messages, oldest first."""

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage], total: int) -> None:
        """Called after the turn is committed; ``total`` is how many messages the conversation holds now."""

    async def forget(self, conversation_id: str) -> None: ...

    async def ping(self) -> None: ...


class SqlMemory:
    def __init__(self, store: ConversationStore, max_messages: int = 100, keep_fraction: float = KEEP_FRACTION) -> None:
        self.store = store
        self.max_messages = max_messages
        self.keep_fraction = keep_fraction

    async def load(self, conversation_id: str) -> list[BaseMessage]:
        rows = await window_rows(self.store, conversation_id, self.max_messages, self.keep_fraction)
        return [from_record(**row_record(row)) for row in rows]

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage], total: int) -> None:
        return None  # the store already holds them

    async def forget(self, conversation_id: str) -> None:
        return None

    async def ping(self) -> None:
        await self.store.db.ping()


# A rebuild writes the list only when nothing marked it stale meanwhile: a turn committed (or a
# delete) between the rebuild's database read and its write would otherwise be lost (or undone).
_REBUILD = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# ARGV: ttl, max messages, block, stale seconds, messages before this turn, the turn's records.
# The list holds the conversation's window: its messages from window_start(n) (in Python above) on.
# - The list holds exactly the window before this turn: extend it, and drop a block when it overflows.
# - It holds something else (a concurrent turn, a rebuild that read an older copy): drop it,
#   the next load rebuilds it from the database.
# - It is missing and this turn is the whole conversation: start it.
# - It is missing otherwise: mark the conversation stale, so that a rebuild that read the
#   database before this turn was committed does not write a copy without it.
_APPEND = """
local max, block = tonumber(ARGV[2]), tonumber(ARGV[3])
local function kept(n)
  if n <= max then return n end
  return n - math.ceil((n - max) / block) * block
end
local before = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('LLEN', KEYS[1]) ~= kept(before) then
    redis.call('DEL', KEYS[1])
    return 0
  end
elseif before > 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[2], 1, 'EX', ARGV[4])
  return 0
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 6))
redis.call('LTRIM', KEYS[1], -kept(before + #ARGV - 5), -1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
STALE_SECONDS = 5  # longer than a rebuild takes from its database read to its write

log = logging.getLogger(__name__)


class RedisMemory:
    def __init__(
        self,
        redis: Redis,
        store: ConversationStore,
        *,
        ttl_seconds: int = 86400,
        max_messages: int = 100,
        prefix: str = "genai:memory:",
        on_fallback=None,
        keep_fraction: float = KEEP_FRACTION,
    ) -> None:
        self.redis = redis
        # What memory is read from while Redis is unreachable.
        self.database = SqlMemory(store, max_messages, keep_fraction)
        self.outage = Outage()
        self.on_fallback = on_fallback  # called with "memory" when a turn is read from the database for want of Redis
        # Conversations whose turns could not be appended while Redis was down: their lists are dropped when it
        # answers again (this process's; a list also expires after ``ttl_seconds``).
        self.unsynced: set[str] = set()
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_messages = max_messages
        self.keep_fraction = keep_fraction
        self.prefix = prefix
        self._rebuild = redis.register_script(_REBUILD)
        self._append = redis.register_script(_APPEND)

    def key(self, conversation_id: str) -> str:
        return f"{self.prefix}{conversation_id}"

    def stale_key(self, conversation_id: str) -> str:
        return f"{self.prefix}{conversation_id}:stale"

    async def load(self, conversation_id: str) -> list[BaseMessage]:
        if self.outage.skip:
            return await self._from_database(conversation_id)
        try:
            await self._resync()
            loaded = await self._load(conversation_id)
        except RedisError as exc:
            self._down(exc)
            return await self._from_database(conversation_id)
        self._up()
        return loaded

    async def _load(self, conversation_id: str) -> list[BaseMessage]:
        key = self.key(conversation_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            raw, _ = await pipe.lrange(key, -self.max_messages, -1).expire(key, self.ttl_seconds).execute()
        if raw:
            return [from_record(**orjson.loads(item)) for item in raw]
        rows = await window_rows(self.store, conversation_id, self.max_messages, self.keep_fraction)
        if rows:
            records = [orjson.dumps(row_record(row)) for row in rows]
            await self._rebuild(keys=[key, self.stale_key(conversation_id)], args=[self.ttl_seconds, *records])
        return [from_record(**row_record(row)) for row in rows]

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage], total: int) -> None:
        """After the turn is committed: never fails for Redis (the database has the turn)."""
        if not messages:
            return
        if self.outage.skip:
            self.unsynced.add(conversation_id)
            return
        try:
            await self._resync()
            await self._append_records(conversation_id, messages, total)
        except RedisError as exc:
            self._down(exc)
            self.unsynced.add(conversation_id)
        else:
            self._up()

    async def _append_records(self, conversation_id: str, messages: Sequence[BaseMessage], total: int) -> None:
        records = [orjson.dumps(to_record(message)) for message in messages]
        keys = [self.key(conversation_id), self.stale_key(conversation_id)]
        before = max(total - len(records), 0)
        block = window_block(self.max_messages, self.keep_fraction)
        args = [self.ttl_seconds, self.max_messages, block, STALE_SECONDS, before, *records]
        await self._append(keys=keys, args=args)

    async def forget(self, conversation_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(conversation_id)).set(self.stale_key(conversation_id), 1, ex=STALE_SECONDS)
            await pipe.execute()

    async def ping(self) -> None:
        await self.redis.ping()

    async def _from_database(self, conversation_id: str) -> list[BaseMessage]:
        if self.on_fallback is not None:
            self.on_fallback("memory")
        return await self.database.load(conversation_id)

    def _down(self, exc: RedisError) -> None:
        if self.outage.down():
            log.warning("Redis is unreachable: memory is read from the database until it answers: %s", exc)

    def _up(self) -> None:
        if self.outage.up():
            log.warning("Redis answers again: memory is kept there again")

    async def _resync(self) -> None:
        """Once Redis answers after an outage: drop the lists that miss turns appended meanwhile (the next read
        rebuilds them from the database)."""
        if not self.unsynced:
            return
        stale = sorted(self.unsynced)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in stale:
                pipe.delete(self.key(conversation_id)).set(self.stale_key(conversation_id), 1, ex=STALE_SECONDS)
            await pipe.execute()
        self.unsynced.difference_update(stale)
