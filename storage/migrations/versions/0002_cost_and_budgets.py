"""Cost and budgets: each usage record's cost, and a monthly budget on apps and on keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Batch mode, so that SQLite (which cannot alter most of a table in place) gets the same columns as PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> dict[str, list[sa.Column]]:
    """New Column objects on each call: a Column belongs to the one table it is added to."""
    return {
        "usage": [sa.Column("cost", sa.Float(), server_default=sa.text("0"), nullable=False)],
        "apps": [sa.Column("monthly_budget", sa.Float(), nullable=True)],
        "api_keys": [sa.Column("monthly_budget", sa.Float(), nullable=True)],
    }


def upgrade() -> None:
    for table, columns in _columns().items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.add_column(column)


def downgrade() -> None:
    for table, columns in _columns().items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_column(column.name)
