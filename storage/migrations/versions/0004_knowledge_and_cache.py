"""Knowledge and cache: files, vector stores and their files; an app's default store and cache switch; the
citations of an answer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )
    op.create_index("ix_files_app_id", "files", ["app_id"])
    op.create_index("ix_files_created_at", "files", ["created_at"])
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("content_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("last_active_at", sa.Integer(), nullable=True),
    )
    op.create_index("ix_vector_stores_app_id", "vector_stores", ["app_id"])
    op.create_index("ix_vector_stores_created_at", "vector_stores", ["created_at"])
    op.create_table(
        "vector_store_files",
        sa.Column(
            "vector_store_id",
            sa.String(64),
            sa.ForeignKey("vector_stores.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("file_id", sa.String(64), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", sa.JSON(), nullable=True),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("usage_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )
    op.create_index("ix_vector_store_files_app_id", "vector_store_files", ["app_id"])
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("default_vector_store_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("cache_enabled", sa.Boolean(), server_default=sa.true(), nullable=False))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("citations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("citations")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("cache_enabled")
        batch.drop_column("default_vector_store_id")
    op.drop_table("vector_store_files")
    op.drop_table("vector_stores")
    op.drop_table("files")
