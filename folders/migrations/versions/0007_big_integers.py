"""64-bit byte sizes and login attempt ids on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

``document_versions.size`` and ``stored_size`` were INTEGER, 32-bit on PostgreSQL, so a
version of 2 GiB or more could not be recorded there (SQLite stored it). And every
login attempt takes the next ``login_attempts.id`` whether old rows are pruned or not,
so a SERIAL's sequence, which ends at 2**31 - 1, would one day refuse every login.
Both become BIGINT, and the sequence bigint too. On SQLite INTEGER holds 64 bits
already, so nothing changes there and no table is rebuilt.

On PostgreSQL the two columns change in one ALTER TABLE, which rewrites
``document_versions`` once, holding an exclusive lock on it meanwhile.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE document_versions"
        " ALTER COLUMN size TYPE BIGINT, ALTER COLUMN stored_size TYPE BIGINT"
    )
    op.execute("ALTER TABLE login_attempts ALTER COLUMN id TYPE BIGINT")
    # The sequence's own type bounds it too; widening it raises its maximum with it.
    op.execute(f"ALTER SEQUENCE {_id_sequence()} AS BIGINT")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # Fails, changing nothing, once a value no longer fits in 32 bits.
    op.execute(f"ALTER SEQUENCE {_id_sequence()} AS INTEGER")
    op.execute("ALTER TABLE login_attempts ALTER COLUMN id TYPE INTEGER")
    op.execute(
        "ALTER TABLE document_versions"
        " ALTER COLUMN size TYPE INTEGER, ALTER COLUMN stored_size TYPE INTEGER"
    )


def _id_sequence() -> str:
    """The sequence behind ``login_attempts.id``, quoted and schema-qualified as needed."""
    name = (
        op.get_bind()
        .execute(text("SELECT pg_get_serial_sequence('login_attempts', 'id')"))
        .scalar_one()
    )
    if not isinstance(name, str):
        raise RuntimeError("login_attempts.id has no sequence")
    return name
