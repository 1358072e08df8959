"""bulk ingest: intents in SQL, not marker objects in the store

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

A bulk ingest commits a row naming each object before it puts the object, and deletes
the row once the object's version is committed, so a crash in between leaves a row
naming the possible orphan (``docs/bulk-ingest.md``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_intents",
        sa.Column("object_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("object_key", name=op.f("pk_ingest_intents")),
    )
    op.create_index(
        op.f("ix_ingest_intents_created_at"), "ingest_intents", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ingest_intents_created_at"), table_name="ingest_intents")
    op.drop_table("ingest_intents")
