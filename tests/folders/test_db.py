from __future__ import annotations

import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import OperationalError

from audit.models import AuditBase
from folders.db import current_revision, head_revision, make_engine, upgrade
from folders.models import Base, Student
from folders.students import SEARCH_TEXT
from tests.support.db import PostgresServer


def _modelled(obj: object, name: str | None, type_: str, *_args: object) -> bool:
    # The trigram index for student search exists on PostgreSQL only, made by migration
    # 0005 (see test_student_search_can_use_the_trigram_index).
    return not (type_ == "index" and name == "ix_students_search")


def test_migrations_reach_head_and_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _modelled}
        )
        assert compare_metadata(context, [Base.metadata, AuditBase.metadata]) == []


@pytest.mark.postgres
def test_student_search_can_use_the_trigram_index(postgres_database_url: str) -> None:
    engine = make_engine(postgres_database_url)
    try:
        query = select(Student.id).where(SEARCH_TEXT.like("%lope%"), SEARCH_TEXT.like("%an%"))
        sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.begin() as connection:
            # A handful of rows is cheaper to scan; forbid that to see the index is usable.
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars())
        assert "ix_students_search" in plan
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(engine: Engine) -> None:
    before = set(inspect(engine).get_table_names())
    upgrade(engine)
    assert set(inspect(engine).get_table_names()) == before
    assert {"students", "users", "guardianships", "documents", "document_versions", "grants"} <= (
        before
    )


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        pid: int = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return pid


@pytest.mark.postgres
def test_an_idle_pooled_connection_that_died_is_replaced_unnoticed(
    postgres_server: PostgresServer, postgres_database_url: str
) -> None:
    engine = make_engine(postgres_database_url, ping_idle_after=0.05, pool_size=1)
    try:
        first = _backend_pid(engine)
        postgres_server.terminate_backend(first)
        time.sleep(0.1)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_recently_used_pooled_connection_is_reused_without_a_ping(
    postgres_server: PostgresServer, postgres_database_url: str
) -> None:
    # The other side of the trade: no round trip for a connection just used, so a
    # backend killed within that window fails the next transaction, and only that one.
    engine = make_engine(postgres_database_url, ping_idle_after=60, pool_size=1)
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first
        postgres_server.terminate_backend(first)
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
