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
from sqlalchemy import Engine, Select, create_engine, event, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# A pooled server connection idle for longer than this is pinged before it is handed out.
PING_IDLE_AFTER_S = 1.0


def make_engine(url: str, *, ping_idle_after: float = PING_IDLE_AFTER_S, **kwargs: Any) -> Engine:
    """Create an engine. SQLite gets foreign keys, WAL, a busy timeout, a Unicode-aware
    ``lower()``, and transactions that take the write lock at their first write or
    locking read (see :func:`_configure_sqlite`), on every connection.

    An SQLite file is only ever opened, never created: each connection asks SQLite for
    an existing file (URI ``mode=rw``), so a missing one fails to connect
    (OperationalError "unable to open database file"). :func:`create_database_file`
    makes one (``satchel init``). A server database's pooled connections are checked
    before reuse once idle for ``ping_idle_after`` seconds. Other keyword arguments go
    to ``create_engine``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)
        if sqlite_file(url) is not None:
            _open_existing_file_only(engine)
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, **kwargs)
    _ping_idle_connections(engine, ping_idle_after)
    return engine


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the file an SQLite ``url`` names; None for a server database,
    an in-memory one, or a ``uri=true`` URL (whose own ``mode`` governs creation)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") in ("true", "1"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(os.path.abspath(parsed.database))


def create_database_file(url: str) -> None:
    """Create the file of an SQLite ``url`` empty, readable by its owner only (SQLite
    gives its WAL and shared-memory files the same mode), in a directory created 0700
    if missing, unless it exists. Nothing for any other database."""
    path = sqlite_file(url)
    if path is not None:
        _create_private_file(path)


def _open_existing_file_only(engine: Engine) -> None:
    """Open the SQLite file of each new connection as a URI with ``mode=rw``: read and
    write an existing file, never create one."""

    @event.listens_for(engine, "do_connect")
    def _existing_only(
        _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        # The dialect passes the absolute file name; as_uri() percent-encodes it.
        cargs[0] = Path(cargs[0]).as_uri() + "?mode=rw"
        cparams["uri"] = True


def _configure_sqlite(engine: Engine) -> None:
    """Make SQLite connections behave as the PostgreSQL ones do where Satchel relies on it.

    Transactions. The driver (pysqlite, in its default mode) sends a deferred BEGIN
    only before an INSERT, UPDATE or DELETE: the SELECTs a write transaction starts with
    run outside it, and ``with_for_update`` renders nothing. Two writers could then
    both pass a check (is the grant revoked? which version number is next?) before
    either writes. Here the driver sends no BEGIN of its own (``isolation_level =
    None``, as in SQLAlchemy's recipe for pysqlite) and :func:`_begin_before_writing`
    sends ``BEGIN IMMEDIATE`` before the transaction's first statement that writes or
    locks (``SELECT ... FOR UPDATE``). That takes the database's write lock before the
    read the write depends on, waiting up to the busy timeout for another writer's
    commit, so a locking read on SQLite serialises writers as its row lock does on
    PostgreSQL, only for the whole database. The recipe's other half, a BEGIN in the
    ``begin`` event, would start every transaction there, when nothing tells a read
    from a write yet: a BEGIN IMMEDIATE would make every read in an implicit transaction
    (a ``Session`` without ``begin()``, ``engine.connect()``, a streamed audit export)
    hold the write lock to its end, and a deferred BEGIN would hold a snapshot whose
    first write fails at once (SQLITE_BUSY_SNAPSHOT) once another writer committed.
    So reads before a transaction's first write each see the latest commit, like
    PostgreSQL's READ COMMITTED, and take no lock; :func:`reading_session` and other
    AUTOCOMMIT connections never begin a transaction.

    ``lower()``. SQLite's built-in folds ASCII letters only, while search terms are
    lower-cased in Python, so "Émile" was never found; it is replaced on each connection
    by one with Python's case mapping (as PostgreSQL's lower() folds in a database whose
    LC_CTYPE is not C). It is deterministic, but no SQLite index, view, trigger or
    constraint may use ``lower()``: one built through this function would not match
    what the sqlite3 shell or another program computes with the built-in (a test checks
    the schema). The only index on lower() is migration 0005's, on PostgreSQL only.

    The pragmas: foreign keys are off in SQLite unless asked for; WAL lets readers
    proceed while one transaction writes; the busy timeout is how long a writer (a
    BEGIN IMMEDIATE included) waits for the lock before "database is locked".
    """

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.close()
        dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "checkout")
    def _sqlite_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # SQLAlchemy hands a connection that was in AUTOCOMMIT mode back to the pool
        # with the driver's own transaction handling restored; undo that. The pool has
        # rolled back by now, so this commits nothing.
        if dbapi_connection.isolation_level is not None:
            dbapi_connection.isolation_level = None

    @event.listens_for(engine, "do_execute")
    def _sqlite_execute(cursor: Any, statement: str, _params: Any, context: Any) -> bool:
        _begin_before_writing(cursor, statement, context)
        return False  # the dialect still runs the statement

    @event.listens_for(engine, "do_executemany")
    def _sqlite_executemany(cursor: Any, statement: str, _params: Any, context: Any) -> bool:
        _begin_before_writing(cursor, statement, context)
        return False

    @event.listens_for(engine, "do_execute_no_params")
    def _sqlite_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
        _begin_before_writing(cursor, statement, context)
        return False


# Statements that neither write nor need the write lock; WITH only when it is a SELECT.
_READING_VERBS = frozenset({"SELECT", "WITH", "PRAGMA", "EXPLAIN", "VALUES"})
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK"})


def _begin_before_writing(cursor: Any, statement: str, context: Any) -> None:
    """Send BEGIN IMMEDIATE before ``statement`` if it is the first of its transaction
    to write or lock (see :func:`_configure_sqlite`).

    Runs inside the execution's error handling, so a BEGIN IMMEDIATE that times out
    waiting for the lock raises sqlalchemy's OperationalError ("database is locked")
    like the statement would.
    """
    connection = cursor.connection
    if connection.in_transaction:
        return
    if context.execution_options.get("isolation_level") == "AUTOCOMMIT":
        return  # each statement commits by itself
    if _writes_or_locks(statement, context):
        connection.execute("BEGIN IMMEDIATE")


def _writes_or_locks(statement: str, context: Any) -> bool:
    words = statement.split(maxsplit=1)
    verb = words[0].upper() if words else ""
    if verb in _TRANSACTION_CONTROL:
        return False
    if verb not in _READING_VERBS:
        return True  # INSERT, UPDATE, DELETE, DDL, SAVEPOINT, and anything unknown
    compiled = context.compiled
    query = compiled.statement if compiled is not None else None
    if verb == "WITH" and not isinstance(query, Select):
        return True  # a WITH ... INSERT/UPDATE/DELETE, or text we cannot tell
    # SQLite renders no FOR UPDATE; the write lock stands in for the row lock.
    return isinstance(query, Select) and query._for_update_arg is not None


def unicode_lower(value: object) -> str | None:
    """SQL ``lower()`` for SQLite with Python's Unicode case mapping.

    NULL stays NULL; a BLOB is read as UTF-8 text and a number as its decimal text, as
    the built-in does.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").lower()
    return str(value).lower()


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


def hold_off_writers(session: Session, table: str) -> None:
    """Wait until no other transaction is writing to the table named ``table``, then
    keep new writers waiting until the session's transaction ends; readers go on. Call
    it first in a transaction (``session.begin()``), not in a :func:`reading_session`.

    PostgreSQL: ``LOCK TABLE ... IN SHARE MODE``. SQLite has no table locks: the
    transaction takes the database's write lock (BEGIN IMMEDIATE, as for a locking read,
    see :func:`_configure_sqlite`), which holds off every writer.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
    else:
        session.execute(select(literal(1)).with_for_update())


@contextmanager
def reading_session(engine: Engine) -> Iterator[Session]:
    """A session for reads that need no transaction of their own.

    Its connection is in autocommit mode, so each statement runs on its own: on
    PostgreSQL that spares the BEGIN and ROLLBACK round trips around the reads, and at
    its default READ COMMITTED level the statements of a transaction would see no more
    consistent a picture; on SQLite it never begins a transaction, so it never takes
    the write lock, even for ``with_for_update``. Never write through it.
    """
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with Session(connection) as session:
            yield session
