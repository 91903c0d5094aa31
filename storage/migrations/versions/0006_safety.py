"""Safety: an app's input-guard and moderation modes and its PII policy; the verdicts of an answer, stored with its
message and its usage record. Stored completions (``store: true``): a stateless request's messages and answer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_completions",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )
    op.create_index("ix_stored_completions_app_id", "stored_completions", ["app_id"])
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("guard_mode", sa.String(8), nullable=True))
        batch.add_column(sa.Column("moderation_mode", sa.String(8), nullable=True))
        batch.add_column(sa.Column("pii_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("safety", sa.JSON(), nullable=True))
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("safety", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("safety_outcome", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_table("stored_completions")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("safety_outcome")
        batch.drop_column("safety")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("safety")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("pii_policy")
        batch.drop_column("moderation_mode")
        batch.drop_column("guard_mode")
