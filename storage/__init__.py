"""The database side: engine, tables, apps and keys, transcripts and usage.

SQLite by default, PostgreSQL (or any SQLAlchemy async URL) at scale; the
same tables either way. Every stored row carries the ``app_id`` it belongs to.
"""

from storage.engine import Database
from storage.tenants import Caller, TenantStore
from storage.transcripts import ConversationStore, TurnRecord

__all__ = ["Caller", "ConversationStore", "Database", "TenantStore", "TurnRecord"]
