"""Conversation memory: the prior turns a model sees, behind one interface.

``SqlMemory`` reads the transcript store directly. ``RedisMemory`` keeps each
conversation as a Redis list (plain structures, no modules) with a TTL, and
rebuilds an expired list from the database on the next read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import orjson
from langchain_core.messages import BaseMessage
from redis.asyncio import Redis

from memory.messages import from_record, to_record
from memory.store import ConversationStore


class ConversationMemory(Protocol):
    async def load(self, conversation_id: str) -> list[BaseMessage]:
        """The newest prior messages, oldest first."""

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage]) -> None:
        """Called after the turn is committed to the store."""

    async def forget(self, conversation_id: str) -> None: ...

    async def ping(self) -> None: ...


class SqlMemory:
    def __init__(self, store: ConversationStore, max_messages: int = 100) -> None:
        self.store = store
        self.max_messages = max_messages

    async def load(self, conversation_id: str) -> list[BaseMessage]:
        rows = await self.store.messages(conversation_id, limit=self.max_messages)
        return [from_record(row.role, row.content) for row in rows]

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage]) -> None:
        return None  # the store already holds them

    async def forget(self, conversation_id: str) -> None:
        return None

    async def ping(self) -> None:
        await self.store.db.ping()


class RedisMemory:
    def __init__(
        self,
        redis: Redis,
        store: ConversationStore,
        *,
        ttl_seconds: int = 86400,
        max_messages: int = 100,
        prefix: str = "genai:memory:",
    ) -> None:
        self.redis = redis
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_messages = max_messages
        self.prefix = prefix

    def key(self, conversation_id: str) -> str:
        return f"{self.prefix}{conversation_id}"

    async def load(self, conversation_id: str) -> list[BaseMessage]:
        key = self.key(conversation_id)
        raw = await self.redis.lrange(key, -self.max_messages, -1)
        if raw:
            await self.redis.expire(key, self.ttl_seconds)
            return [from_record(**orjson.loads(item)) for item in raw]
        rows = await self.store.messages(conversation_id, limit=self.max_messages)
        if rows:
            records = [orjson.dumps({"role": row.role, "content": row.content}) for row in rows]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key).rpush(key, *records).expire(key, self.ttl_seconds)
                await pipe.execute()
        return [from_record(row.role, row.content) for row in rows]

    async def append(self, conversation_id: str, messages: Sequence[BaseMessage]) -> None:
        if not messages:
            return
        key = self.key(conversation_id)
        records = [orjson.dumps(to_record(message)) for message in messages]
        # RPUSHX only extends a list that exists: when it has expired meanwhile, the next
        # load rebuilds it from the store, which already holds this turn.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpushx(key, *records).ltrim(key, -self.max_messages, -1).expire(key, self.ttl_seconds)
            await pipe.execute()

    async def forget(self, conversation_id: str) -> None:
        await self.redis.delete(self.key(conversation_id))

    async def ping(self) -> None:
        await self.redis.ping()
