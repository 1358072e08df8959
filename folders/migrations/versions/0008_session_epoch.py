"""users.session_epoch: signing an account's other sessions out

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25

A browser session records the account's epoch when it logs in, and counts only while
the account still has that epoch. Enabling an account and setting its password raise
it, so a session from before, in another browser or a copied cookie, does not come
back to life when a disabled account is enabled again, and does not outlive a password
change. (A disabled account's sessions end anyway: only an active account's count.)
Existing accounts start at 0, which sessions made before this revision carry
implicitly, so upgrading signs nobody out.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("session_epoch", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_epoch")
