from __future__ import annotations

import os
import stat
import time
from pathlib import Path

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


def test_a_new_sqlite_database_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "satchel.db"
    old_umask = os.umask(0o022)  # the usual umask, which would give 0644 files
    try:
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        with engine.connect() as connection:
            assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert modes == {"satchel.db": 0o600, "satchel.db-wal": 0o600, "satchel.db-shm": 0o600}


def test_an_existing_sqlite_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "satchel.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()

    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert current_revision(make_engine(f"sqlite:///{path}")) == head_revision(engine)


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
