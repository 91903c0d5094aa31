"""Conversations count their messages: a turn's write learns the count from its own UPDATE (RETURNING) instead of a
COUNT query, one statement less on every continued turn.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite takes it with a constant default): a batch copy of the table would drop the old one,
    # and with foreign keys on, that DELETE cascades to every message.
    op.add_column(
        "conversations", sa.Column("message_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.execute(
        "UPDATE conversations SET message_count = "
        "(SELECT count(*) FROM messages WHERE messages.conversation_id = conversations.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("message_count")
