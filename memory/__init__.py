"""Conversation memory: the prior turns a model sees (Redis lists, or the SQL transcripts when there is no Redis)."""

from memory.history import ConversationMemory, RedisMemory, SqlMemory

__all__ = ["ConversationMemory", "RedisMemory", "SqlMemory"]
