"""Conversation memory (Redis, or the SQL database when there is no Redis) and the transcript store."""

from memory.db import Database
from memory.history import ConversationMemory, RedisMemory, SqlMemory
from memory.store import ConversationStore, TurnRecord

__all__ = ["ConversationMemory", "ConversationStore", "Database", "RedisMemory", "SqlMemory", "TurnRecord"]
