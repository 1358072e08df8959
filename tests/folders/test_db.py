from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Insert, insert, inspect, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from audit.models import AuditBase
from folders.actor import Actor
from folders.db import (
    create_database_file,
    current_revision,
    head_revision,
    make_engine,
    reading_session,
    upgrade,
)
from folders.models import (
    AttemptOutcome,
    Base,
    DocumentVersion,
    LoginAttempt,
    Role,
    School,
    Student,
)
from folders.runtime import Runtime
from folders.students import SEARCH_TEXT
from folders.throttle import LoginThrottle
from tests.support.db import PostgresServer
from tests.support.people import Cast, upload_pdf


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
        create_database_file(f"sqlite:///{path}")
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


# Search folds case beyond ASCII on both databases ----------------------------------------


def test_student_and_account_search_fold_accented_capitals(runtime: Runtime, cast: Cast) -> None:
    emile = runtime.students.add_student(cast.registrar, "S-77", "Émile", "Zola")
    runtime.accounts.add_user(
        Actor.operator(), "zoe@home.example", Role.GUARDIAN, display_name="Zoë ÅNGSTRÖM"
    )
    for query in ("émile", "ÉMILE", "Émile zola", "ZOLA"):
        found = runtime.students.find_students(cast.registrar, query)
        assert [s.id for s in found.items] == [emile.id], query
    assert runtime.students.find_students(cast.registrar, "emile").items == ()
    for query in ("ångström", "ZOË"):
        users = runtime.accounts.find_users(cast.admin, query)
        assert [u.email for u in users.items] == ["zoe@home.example"], query


def test_sqlite_lower_keeps_null_and_reads_other_types_as_text(tmp_path: Path) -> None:
    create_database_file(f"sqlite:///{tmp_path / 'lower.db'}")
    engine = make_engine(f"sqlite:///{tmp_path / 'lower.db'}")
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT lower(NULL), lower('ÀÉÎ Straße'), lower(12), lower(X'C389')")
            ).one()
    finally:
        engine.dispose()
    assert tuple(row) == (None, "àéî straße", "12", "é")


def test_no_sqlite_schema_object_relies_on_lower(sqlite_template: Path) -> None:
    # Satchel replaces SQLite's lower() with a Unicode-aware one on its own connections;
    # an index, view, trigger or CHECK built through it would not match what the
    # sqlite3 shell or a backup tool computes with the built-in.
    with sqlite3.connect(sqlite_template) as connection:
        users = connection.execute(
            "SELECT type, name FROM sqlite_master WHERE instr(lower(sql), 'lower(') > 0"
        ).fetchall()
    assert users == []


# Sizes and counters pass 32 bits on both databases -----------------------------------


def test_a_version_over_4_gib_and_the_2_billionth_login_attempt_fit(
    runtime: Runtime, cast: Cast
) -> None:
    info, _ = upload_pdf(runtime, cast, cast.child)
    size, stored = 5 * 2**30, 5 * 2**30 + 4096
    with Session(runtime.engine) as session, session.begin():
        session.execute(
            update(DocumentVersion)
            .where(DocumentVersion.id == info.current.id)
            .values(size=size, stored_size=stored)
        )
        if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
            session.execute(
                text("SELECT setval(pg_get_serial_sequence('login_attempts', 'id'), 2147483647)")
            )
        else:  # SQLite numbers a row one past the highest id
            session.add(
                LoginAttempt(
                    id=2**31 - 1,
                    email="someone@home.example",
                    client_address="192.0.2.1",
                    attempted_at=runtime.clock(),
                    outcome=AttemptOutcome.FAILED,
                )
            )
    listed = runtime.documents.list_folder(cast.registrar, cast.child.id)[0].current
    assert listed.size == size
    with Session(runtime.engine) as session:
        assert session.scalar(select(DocumentVersion.stored_size)) == stored
    attempt = LoginThrottle(runtime.engine, runtime.clock).begin("parent@home.example", "::1")
    assert attempt == 2**31


# SQLite transactions: a write takes the lock before the read it rests on ----------------


@pytest.fixture
def sqlite_path(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "satchel.db"
    shutil.copyfile(sqlite_template, path)
    return path


@pytest.fixture
def sqlite_engine(sqlite_path: Path) -> Iterator[Engine]:
    # One pooled connection, so every block below reuses the same driver connection.
    engine = make_engine(f"sqlite:///{sqlite_path}", pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _write_locked(path: Path) -> bool:
    """Whether some connection holds the database's write lock now."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        assert "locked" in str(e)
        return True
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    return False


def test_a_sqlite_transaction_locks_at_its_first_locking_read(
    sqlite_engine: Engine, sqlite_path: Path
) -> None:
    with Session(sqlite_engine) as session, session.begin():
        session.scalars(select(Student)).all()
        assert not _write_locked(sqlite_path)
        session.get(Student, uuid.uuid4(), with_for_update=True)
        assert _write_locked(sqlite_path)
    assert not _write_locked(sqlite_path)


def test_a_sqlite_transaction_locks_at_its_first_write(
    sqlite_engine: Engine, sqlite_path: Path
) -> None:
    with pytest.raises(RuntimeError), sqlite_engine.begin() as connection:
        connection.execute(update(Student).where(Student.id == uuid.uuid4()).values(grade="5"))
        assert _write_locked(sqlite_path)
        raise RuntimeError("rolled back")
    assert not _write_locked(sqlite_path)


def test_sqlite_reads_take_no_lock(sqlite_engine: Engine, sqlite_path: Path) -> None:
    # Reads in an implicit transaction, and every read of a reading session.
    with Session(sqlite_engine) as session:
        session.scalars(select(Student)).all()
        assert not _write_locked(sqlite_path)
    with sqlite_engine.connect() as connection:
        connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        assert not _write_locked(sqlite_path)
    with reading_session(sqlite_engine) as session:
        session.get(Student, uuid.uuid4(), with_for_update=True)
        assert not _write_locked(sqlite_path)


def test_sqlite_settings_hold_after_a_reading_session(
    sqlite_engine: Engine, sqlite_path: Path
) -> None:
    with reading_session(sqlite_engine) as session:
        session.scalars(select(Student)).all()
    # SQLAlchemy resets the connection that was in AUTOCOMMIT mode as it returns to the
    # pool; the next transaction must still take the lock at its locking read.
    with Session(sqlite_engine) as session, session.begin():
        connection = session.connection()
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
        assert connection.scalar(text("PRAGMA busy_timeout")) == 30000
        assert connection.scalar(text("PRAGMA foreign_keys")) == 1
        session.get(Student, uuid.uuid4(), with_for_update=True)
        assert _write_locked(sqlite_path)


def test_a_sqlite_writer_waits_for_the_lock(sqlite_engine: Engine, sqlite_path: Path) -> None:
    holder = sqlite3.connect(sqlite_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.3, holder.execute, ("COMMIT",))
    released.start()
    try:
        started = time.monotonic()
        with sqlite_engine.begin() as connection:
            connection.execute(_new_school("WAIT"))
        assert time.monotonic() - started >= 0.2  # it waited (busy timeout) and wrote
    finally:
        released.join()
        holder.close()
    assert _school_codes(sqlite_engine) == {"WAIT"}


def test_a_sqlite_savepoint_rolls_back_alone(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as connection:
        connection.execute(_new_school("KEPT"))
        savepoint = connection.begin_nested()
        connection.execute(_new_school("UNDONE"))
        savepoint.rollback()
    assert _school_codes(sqlite_engine) == {"KEPT"}


def _new_school(code: str) -> Insert:
    return insert(School).values(
        id=uuid.uuid4(), code=code, name=code.title(), created_at=datetime.now(UTC)
    )


def _school_codes(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(select(School.code)))
