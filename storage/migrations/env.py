"""Alembic's environment: migrations run on the connection ``storage.migrations.upgrade`` hands over.

There is no alembic.ini: ``storage.migrations.alembic_config`` builds the config in code, and the
connection (already holding the migration lock) arrives in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from storage.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `genai db upgrade` (storage.migrations.upgrade), not the alembic command")

# render_as_batch: SQLite alters tables by copying them; Alembic's batch mode does that for it.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
