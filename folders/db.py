"""Database engine construction and schema migration (Alembic), for SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# A pooled server connection idle for longer than this is pinged before it is handed out.
PING_IDLE_AFTER_S = 1.0


def make_engine(url: str, *, ping_idle_after: float = PING_IDLE_AFTER_S, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets foreign keys, WAL and a busy timeout on every connection.

    A missing SQLite file is created readable by its owner only (SQLite gives its WAL
    and shared-memory files the same mode), in a directory created 0700 if missing; an
    existing file keeps its mode. A server database's pooled
    connections are checked before reuse once idle for ``ping_idle_after`` seconds.
    Other keyword arguments go to ``create_engine``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA busy_timeout = 30000")
            cursor.close()

        return engine
    engine = create_engine(url, **kwargs)
    _ping_idle_connections(engine, ping_idle_after)
    return engine


def _create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (and its directory 0700) unless it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _ping_idle_connections(engine: Engine, idle_after: float) -> None:
    """Check a pooled connection that sat idle before handing it out again.

    A server restart, failover or idle timeout kills connections while they wait in the
    pool; such a connection is replaced before any request uses it. A connection used
    within the last ``idle_after`` seconds is handed out unchecked, which spares
    the round trip that ``pool_pre_ping`` spends on every checkout of a busy pool (one
    in three of a short transaction's). A backend that dies while in use fails that
    transaction either way, and the pool then replaces every older connection.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < idle_after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as e:
            # The pool discards this connection and checks out a fresh one.
            raise DisconnectionError(f"pooled connection lost: {type(e).__name__}") from e


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every pending migration (idempotent)."""
    command.upgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()


@contextmanager
def reading_session(engine: Engine) -> Iterator[Session]:
    """A session for reads that need no transaction of their own.

    Its connection is in autocommit mode, so each statement runs on its own: on
    PostgreSQL that spares the BEGIN and ROLLBACK round trips around the reads, and at
    its default READ COMMITTED level the statements of a transaction would see no more
    consistent a picture. Never write through it.
    """
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with Session(connection) as session:
            yield session
