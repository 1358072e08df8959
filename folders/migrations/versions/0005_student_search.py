"""student search: a trigram index on PostgreSQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

A registrar's search matches each term anywhere in a student's names or ids
(``folders.students.SEARCH_TEXT``), which no B-tree index serves. On PostgreSQL a GIN
index of the trigrams of that text lets a search read only the matching rows. pg_trgm
is a trusted extension (PostgreSQL 13 and later), so a database owner may create it;
where it is missing or may not be created, search still works, by reading every student.
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_logger = logging.getLogger("alembic.runtime.migration")

# The expression folders.students.SEARCH_TEXT renders: a query uses the index only if
# it asks for the same expression.
SEARCH_TEXT = (
    "lower(given_name || ' ' || family_name || ' ' || district_id || ' ' || coalesce(state_id, ''))"
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as e:
        _logger.warning(
            "pg_trgm is not available (%s); student search will read every student",
            str(e.orig).strip().splitlines()[0],
        )
        return
    op.execute(
        f"CREATE INDEX ix_students_search ON students USING gin (({SEARCH_TEXT}) gin_trgm_ops)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_students_search")
