"""upload_forms: an upload form is stored once, however often it is sent

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25

Each upload page carries a random form id. The first request that sends it claims the id
here, in the database every worker shares, before storing anything; the same form sent
again (a reload of the results page, the browser's history, a second click while the
first is on its way, another worker) finds it claimed and stores nothing. A form that
stored nothing gives its claim back. Claims are kept for a week.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_forms",
        sa.Column("form_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_upload_forms_user_id_users")
        ),
        sa.PrimaryKeyConstraint("form_id", name=op.f("pk_upload_forms")),
    )
    op.create_index(op.f("ix_upload_forms_user_id"), "upload_forms", ["user_id"])
    op.create_index(op.f("ix_upload_forms_sent_at"), "upload_forms", ["sent_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_upload_forms_sent_at"), table_name="upload_forms")
    op.drop_index(op.f("ix_upload_forms_user_id"), table_name="upload_forms")
    op.drop_table("upload_forms")
