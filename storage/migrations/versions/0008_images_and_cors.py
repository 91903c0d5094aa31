"""Images and browser apps: generated images, the images a request made on its usage record, an app's allowed
browser origins (CORS).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("revised_prompt", sa.Text(), nullable=True),
        sa.Column("size", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(256), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )
    op.create_index("ix_images_app_id", "images", ["app_id"])
    op.create_index("ix_images_response_id", "images", ["response_id"])
    op.create_index("ix_images_created_at", "images", ["created_at"])
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("images", sa.Integer(), nullable=False, server_default=sa.text("0")))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("cors_origins", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_table("images")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("images")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("cors_origins")
