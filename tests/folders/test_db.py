from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from audit.models import AuditBase
from folders.db import current_revision, head_revision, upgrade
from folders.models import Base


def test_migrations_reach_head_and_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, [Base.metadata, AuditBase.metadata]) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    before = set(inspect(engine).get_table_names())
    upgrade(engine)
    assert set(inspect(engine).get_table_names()) == before
    assert {"students", "users", "guardianships", "documents", "document_versions", "grants"} <= (
        before
    )
