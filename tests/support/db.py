"""Database fixtures: every test that uses ``engine`` runs on SQLite and on PostgreSQL.

Migrations run once per session into a template (a SQLite file, a PostgreSQL template
database); each test gets a fresh copy, so tests never see each other's rows.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event

from folders.db import create_database_file, make_engine, upgrade
from tests.support.postgres import libpq_url, resolve_url
from tests.support.required import missing_service


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    create_database_file(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


class PostgresServer:
    """An admin connection URL and helpers to create/drop throwaway databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url_for(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def execute(self, sql: str) -> None:
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None) -> str:
        """A new database: a copy of ``template``, else an empty one in UTF-8 with a UTF-8
        locale whatever the server's default (under C, lower() folds ASCII only), as the
        README asks of production databases."""
        name = f"satchel_t_{uuid.uuid4().hex[:12]}"
        source = (
            f'"{template}"'
            if template
            else "template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
        )
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE {source}')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_backend(self, pid: int) -> None:
        """End the server process ``pid`` (a client connection) and wait until it is gone."""
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                time.sleep(0.01)


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    url = resolve_url()
    if url is None:
        missing_service(
            "PostgreSQL",
            "set SATCHEL_TEST_DATABASE_URL or run the suite with `make test`",
        )
    return PostgresServer(url)


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    engine = make_engine(postgres_server.url_for(name))
    upgrade(engine)
    engine.dispose()
    yield name
    postgres_server.drop_database(name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database of each kind."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "satchel.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database(template=request.getfixturevalue("postgres_template"))
    yield server.url_for(name)
    server.drop_database(name)


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (for tests that need only PostgreSQL)."""
    name = postgres_server.create_database(template=postgres_template)
    yield postgres_server.url_for(name)
    postgres_server.drop_database(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class Sent:
    """A statement a connection sent, and whether it was in autocommit mode."""

    sql: str
    autocommit: bool


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[Sent]]:
    """The statements that connections of ``engine`` checked out in the block send.

    Seen at the driver, so statements run past SQLAlchemy count as well. On PostgreSQL
    those run through a cursor (psycopg sends BEGIN and COMMIT itself); on SQLite every
    statement the library runs, BEGIN and COMMIT included. The pool's idle ping runs
    before a connection is traced.
    """
    sent: list[Sent] = []

    class Tracing(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Tracing:
            sent.append(Sent(str(query), self.connection.autocommit))
            return super().execute(query, params, **kwargs)

    def traced(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(
                # The driver sends no BEGIN of its own (folders.db): a statement runs in
                # autocommit mode unless a BEGIN IMMEDIATE opened a transaction.
                lambda sql: sent.append(Sent(sql, not dbapi_connection.in_transaction))
            )
        else:
            dbapi_connection.cursor_factory = Tracing

    def untraced(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(None)
        else:
            dbapi_connection.cursor_factory = psycopg.Cursor

    event.listen(engine, "checkout", traced)
    event.listen(engine, "checkin", untraced)
    try:
        yield sent
    finally:
        event.remove(engine, "checkout", traced)
        event.remove(engine, "checkin", untraced)
