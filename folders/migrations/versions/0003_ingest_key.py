"""bulk ingest: documents.ingest_key, the idempotency key of a manifest row

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column and a separate unique index: both are plain ALTER/CREATE
    # statements on SQLite too, so the documents table (referenced by versions, grants
    # and guardianships) is never rebuilt. NULLs (uploads in the browser) never collide.
    op.add_column("documents", sa.Column("ingest_key", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_documents_ingest_key"), "documents", ["ingest_key"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_documents_ingest_key"), table_name="documents")
    op.drop_column("documents", "ingest_key")
