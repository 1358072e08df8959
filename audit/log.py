"""The audit log: append events, seal them in signed checkpoints, query, prove, verify.

- :meth:`AuditLog.append` writes an event inside the caller's transaction, so it commits
  or rolls back with the change it records (fail closed); :meth:`AuditLog.record` is the
  same in a transaction of its own.
- Sequence numbers come from the one-row ``audit_head`` table: an append first increments
  it, which takes a lock every other append must wait for (a row lock on PostgreSQL, the
  database write lock on SQLite) until the transaction ends. Numbers are therefore
  gapless and committed in order, across any number of processes.
- On PostgreSQL an append is usually one statement: the entry is computed in advance on
  the guess that the head is still the last event this object appended, and the
  statement inserts it only if, once the lock is taken, the head really is that event.
  Inside a caller's transaction a wrong guess still takes the lock and returns the real
  head, and a second statement inserts the entry computed from it, as on SQLite.
  :meth:`AuditLog.record` sends its one statement in autocommit mode (a statement is a
  transaction of its own), sparing the BEGIN round trip; there a wrong guess changes
  nothing, and the append is made again in a transaction.
- :meth:`AuditLog.checkpoint` seals every committed event in an Ed25519-signed RFC 9162
  tree head, stored in SQL and in the object store. The tree is kept in memory and only
  extended, so a checkpoint costs the new events, not the whole log.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    bindparam,
    case,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Compiled
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NoResultFound,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

from audit.checkpoint import Checkpoint, CheckpointSigner, SignedCheckpoint
from audit.errors import AuditError, AuditIntegrityError, AuditUnavailable, ProofError
from audit.events import (
    GENESIS_HASH,
    PAYLOAD_FIELDS,
    Action,
    Event,
    Outcome,
    RecordedEvent,
    decode_entry,
    entry_from_values,
    event_values,
    format_time,
)
from audit.merkle import MerkleAccumulator, leaf_hash, verify_inclusion
from audit.models import CHECKPOINTS, EVENTS, HEAD
from audit.verify import (
    CHECKPOINT_PREFIX,
    VerifyReport,
    checkpoint_key,
    verify_log,
)
from storage.errors import ObjectNotFound, StorageError
from storage.objects import ObjectStore

__all__ = [
    "CHECKPOINT_PREFIX",
    "AuditLog",
    "EventFilter",
    "EventNotFound",
    "InclusionProof",
    "Page",
    "checkpoint_key",
]

T = TypeVar("T")

_logger = logging.getLogger(__name__)

MAX_PER_PAGE = 500
_MAX_BATCH = 64  # events committed together by record()
_CHECK_INTERVAL = timedelta(seconds=1)  # maybe_checkpoint asks at least this often
_STREAM_BATCH = 10_000

_NEXT_SEQUENCE = (
    update(HEAD)
    .where(HEAD.c.id == 1)
    .values(last_sequence=HEAD.c.last_sequence + 1)
    .returning(HEAD.c.last_sequence, HEAD.c.last_leaf_hash)
)
_INSERT_EVENT = insert(EVENTS).values(
    {column.name: bindparam(column.name, type_=column.type) for column in EVENTS.c}
)
_ADVANCE_HEAD = update(HEAD).where(HEAD.c.id == 1).values(last_leaf_hash=bindparam("leaf_hash"))
# PostgreSQL runs both in one statement (a data-modifying WITH), saving a round trip
# per append; the INSERT runs to completion although the UPDATE does not read it.
_INSERT_AND_ADVANCE = _ADVANCE_HEAD.add_cte(_INSERT_EVENT.cte("appended"))


def _claim_and_insert() -> Select[tuple[int, bytes, int]]:
    """PostgreSQL's one-statement append of an entry computed on a guess of the head.

    The entry's row values and the guessed head (``guess_sequence``, ``guess_leaf``) are
    the parameters. The UPDATE increments the counter, taking the lock as
    ``_NEXT_SEQUENCE`` does; the INSERT copies the entry only when the head it locked is
    the guessed one. The statement returns the counter after the UPDATE, the head's leaf
    hash after it, and how many events were inserted (0 or 1). A wrong guess leaves the
    leaf hash as that of the event before the claimed number, for the caller to insert
    the right entry in a second statement.
    """
    guessed = (HEAD.c.last_sequence == bindparam("guess_sequence")) & (
        HEAD.c.last_leaf_hash == bindparam("guess_leaf")
    )
    claim = (
        update(HEAD)
        .where(HEAD.c.id == 1)
        .values(
            last_sequence=HEAD.c.last_sequence + 1,
            last_leaf_hash=case((guessed, bindparam("leaf_hash")), else_=HEAD.c.last_leaf_hash),
        )
        .returning(HEAD.c.last_sequence, HEAD.c.last_leaf_hash)
        .cte("claim")
    )
    values = [bindparam(column.name, type_=column.type) for column in EVENTS.c]
    inserted = (
        insert(EVENTS)
        .from_select(
            [column.name for column in EVENTS.c],
            select(*values)
            .select_from(claim)
            .where(
                claim.c.last_sequence == bindparam("sequence"),
                claim.c.last_leaf_hash == bindparam("leaf_hash"),
            ),
        )
        .returning(EVENTS.c.sequence)
        .cte("inserted")
    )
    return select(
        claim.c.last_sequence,
        claim.c.last_leaf_hash,
        select(func.count()).select_from(inserted).scalar_subquery(),
    )


@functools.cache
def _insert_all_if_guessed(count: int) -> Select[tuple[int]]:
    """PostgreSQL's one-statement append of ``count`` chained entries, if the guess holds.

    Parameters: ``guess_sequence`` and ``guess_leaf`` (the guessed head), ``last_leaf``
    (the leaf hash of the last entry) and each entry's row values, suffixed ``_0`` to
    ``_{count - 1}``. Only if the head is the guessed one does the UPDATE advance it by
    ``count`` and the INSERT copy the entries; otherwise nothing changes and no row is
    returned. The one row returned holds the number of events inserted.
    """
    claim = (
        update(HEAD)
        .where(
            HEAD.c.id == 1,
            HEAD.c.last_sequence == bindparam("guess_sequence"),
            HEAD.c.last_leaf_hash == bindparam("guess_leaf"),
        )
        .values(last_sequence=HEAD.c.last_sequence + count, last_leaf_hash=bindparam("last_leaf"))
        .returning(HEAD.c.last_sequence)
        .cte("claim")
    )
    rows = [
        select(
            *(bindparam(f"{column.name}_{i}", type_=column.type) for column in EVENTS.c)
        ).select_from(claim)
        for i in range(count)
    ]
    inserted = (
        insert(EVENTS)
        .from_select([column.name for column in EVENTS.c], union_all(*rows))
        .returning(EVENTS.c.sequence)
        .cte("inserted")
    )
    return select(select(func.count()).select_from(inserted).scalar_subquery()).select_from(claim)


_CLAIM_AND_INSERT = _claim_and_insert()
_LOG_SIZE = select(func.coalesce(func.max(EVENTS.c.sequence), 0))
_LATEST_NOTE = select(CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.tree_size.desc()).limit(1)
_PENDING = select(
    HEAD.c.last_sequence,
    select(func.max(CHECKPOINTS.c.tree_size)).scalar_subquery(),
    select(CHECKPOINTS.c.signed_at)
    .order_by(CHECKPOINTS.c.tree_size.desc())
    .limit(1)
    .scalar_subquery(),
)


class EventNotFound(AuditError):
    """No event has the requested sequence number (or it is not sealed yet)."""

    public_message = "No such audit event."

    def __init__(self, sequence: int) -> None:
        super().__init__(f"no audit event with sequence number {sequence}")
        self.sequence = sequence


@dataclass(frozen=True)
class EventFilter:
    """Which events a query or export selects; ``since`` is inclusive, ``until`` exclusive.

    ``up_to_seq`` keeps only events numbered at most it: a snapshot of the log as it was
    when that event was its head, which later appends never change (numbers are gapless
    and committed in order). Raises ``ValueError`` for a naive ``since`` or ``until``
    and an ``up_to_seq`` below 1.
    """

    actor_email: str | None = None
    actor_id: str | None = None
    student_id: str | None = None
    document_id: str | None = None
    action: Action | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    up_to_seq: int | None = None

    def __post_init__(self) -> None:
        for bound in (self.since, self.until):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError("audit query times must be timezone-aware")
        if self.up_to_seq is not None and self.up_to_seq < 1:
            raise ValueError("up_to_seq must be at least 1")

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        for name in ("actor_email", "actor_id", "student_id", "document_id", "action", "outcome"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(EVENTS.c[name] == str(value))
        if self.since is not None:
            clauses.append(EVENTS.c.recorded_at >= self.since)
        if self.until is not None:
            clauses.append(EVENTS.c.recorded_at < self.until)
        if self.up_to_seq is not None:
            clauses.append(EVENTS.c.sequence <= self.up_to_seq)
        return clauses


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and the total number of matches.

    ``up_to_seq``, when set, is the audit snapshot the page was read from (see
    :meth:`AuditLog.query`): asking for other pages with it pages through the same
    matches.
    """

    items: tuple[T, ...]
    page: int
    per_page: int
    total: int
    up_to_seq: int | None = None

    @property
    def pages(self) -> int:
        return last_page(self.total, self.per_page)

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def last_page(total: int, per_page: int) -> int:
    """The number of the last page of ``total`` matches (1 when there are none); a
    requested page past it is shown as it."""
    return max(1, -(-total // per_page))


@dataclass(frozen=True)
class InclusionProof:
    """Evidence that ``event`` is leaf ``event.sequence - 1`` of the signed ``checkpoint``.

    ``hashes`` is the RFC 9162 §2.1.3.1 inclusion proof (audit path), bottom-up.
    """

    event: RecordedEvent
    checkpoint: SignedCheckpoint
    hashes: tuple[bytes, ...]

    @property
    def leaf_index(self) -> int:
        return self.event.sequence - 1


def _reason(error: Exception) -> str:
    # The driver's own message names the failure; SQLAlchemy's text would add the
    # statement's parameters, i.e. the event's personal data, to the logs.
    cause = error.orig if isinstance(error, DBAPIError) else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


@dataclass(eq=False)
class _Waiting:
    """An event handed to :meth:`AuditLog.record`, waiting for its batch to commit."""

    event: Event
    values: tuple[str | None, ...]
    outcome: RecordedEvent | AuditUnavailable | None = None


def _first_row(
    connection: Connection, compiled: Compiled, parameters: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The first row of ``compiled`` run with ``parameters`` on ``connection``'s driver.

    What ``connection.execute(statement, parameters).first()`` returns, for a third of
    the client's time per append: no cache lookup, execution context or result object,
    and no bind processing, so ``parameters`` must hold what the driver takes (aware
    UTC datetimes, bytes, text, integers). A driver error is raised as SQLAlchemy's,
    after the connection is invalidated if the error lost it. Raises
    :class:`sqlalchemy.exc.DBAPIError`.
    """
    dialect = connection.dialect
    pooled = connection.connection
    try:
        cursor = pooled.cursor()
        try:
            cursor.execute(compiled.string, compiled.construct_params(parameters))
            row = cursor.fetchone()
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as e:
        lost = dialect.is_disconnect(e, pooled.dbapi_connection, None)
        if lost:
            connection.invalidate(e)
        raise DBAPIError.instance(
            compiled.string,
            None,
            e,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from e
    return None if row is None else tuple(row)


def _unavailable(error: Exception) -> AuditUnavailable:
    unavailable = AuditUnavailable(f"the audit event could not be written: {_reason(error)}")
    unavailable.__cause__ = error
    return unavailable


class AuditLog:
    """The append-only, tamper-evident audit log (DESIGN §6).

    ``origin`` names the log in its checkpoints. ``retention_days``, when set, writes
    each checkpoint to the object store under COMPLIANCE retention for that many days
    (the bucket must have Object Lock). A checkpoint is due once ``checkpoint_every``
    events, or any events older than ``checkpoint_interval``, are unsealed;
    :meth:`maybe_checkpoint` looks for one after every ``checkpoint_every // 16`` events
    this object appends (at least one) and at least once a second.
    Raises ``ValueError`` for a non-positive ``checkpoint_every`` or ``retention_days``.
    """

    def __init__(
        self,
        engine: Engine,
        signer: CheckpointSigner,
        store: ObjectStore,
        clock: Callable[[], datetime],
        *,
        origin: str,
        retention_days: int | None = None,
        checkpoint_every: int = 256,
        checkpoint_interval: timedelta = timedelta(minutes=5),
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if retention_days is not None and retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        self._engine = engine
        self._signer = signer
        self._verifier = signer.verifier()
        self._store = store
        self._clock = clock
        self._origin = origin
        self._retention_days = retention_days
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        # The Merkle tree over every event this object has sealed or checked, and the
        # leaf hash of its last event; guarded by _tree_lock.
        self._tree_lock = threading.Lock()
        self._tree = MerkleAccumulator()
        self._tree_head = GENESIS_HASH
        # The sequence number and leaf hash of the last event this object appended,
        # the guess for the next append's head (see _append_guessing). Only a hint:
        # the database checks it, so a stale or rolled-back one costs a round trip.
        self._last_appended: tuple[int, bytes] | None = None
        # Whether the last guess held. Under contention guesses mostly fail, and an
        # autocommit attempt that fails costs a wasted round trip, so record() makes
        # one only after a guess held.
        self._guess_held = False
        # When maybe_checkpoint last asked the database, and how many events this
        # object has appended since (a hint: unlocked increments may be lost).
        self._checked_at: datetime | None = None
        self._appended_since_check = 0
        self._check_after = max(1, checkpoint_every // 16)
        # Group commit (see record): the events waiting to be written, and whether a
        # caller is writing a batch now; both guarded by _batching.
        self._batching = threading.Condition()
        self._queue: list[_Waiting] = []
        self._writing = False
        # The one-statement appends, compiled once for this log's database (see
        # _first_row); keyed by the statement.
        self._compiled: dict[Select[Any], Compiled] = {}

    # Appending --------------------------------------------------------------------------

    def append(self, session: Session, event: Event) -> RecordedEvent:
        """Write ``event`` inside ``session``'s open transaction and return it as stored.

        The event commits or rolls back with the caller's transaction. The sequence
        lock is held until that transaction ends, so keep it short; on PostgreSQL the
        transaction must run at READ COMMITTED (the default), since a stricter level
        turns concurrent appends into serialisation failures. Raises
        :class:`AuditUnavailable` if the event cannot be written; the caller must then
        let its transaction roll back (leaving ``with session.begin():`` by the
        exception does that), so the action it records does not happen.
        """
        try:
            return self._append(session.connection(), event, event_values(event))
        except (SQLAlchemyError, ValueError) as e:
            raise AuditUnavailable(f"the audit event could not be written: {_reason(e)}") from e

    def record(self, event: Event) -> RecordedEvent:
        """Write ``event`` in a transaction of its own (views, failed logins, denials).

        Returns once the event is committed. Concurrent calls on this object share
        their commits (group commit): one caller writes every event waiting at that
        moment, up to ``_MAX_BATCH``, in one transaction while the others wait for it,
        so the sequence lock is taken once per batch rather than once per event.
        Raises :class:`AuditUnavailable`; when a batch cannot be written, each of its
        callers gets the error, except that an event the database refuses on its own
        (a constraint or value error) is written alone, failing only its caller.
        """
        try:
            waiting = _Waiting(event, event_values(event))
        except ValueError as e:
            raise _unavailable(e) from e
        with self._batching:
            self._queue.append(waiting)
        while True:
            with self._batching:
                while self._writing and waiting.outcome is None:
                    self._batching.wait()
                if waiting.outcome is not None:
                    break
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                self._writing = True
            outcomes: list[RecordedEvent | AuditUnavailable] = []
            try:
                outcomes = self._write_batch(batch)
            finally:
                with self._batching:
                    for pending, outcome in itertools.zip_longest(batch, outcomes):
                        pending.outcome = (
                            AuditUnavailable("the audit event's writer was interrupted")
                            if outcome is None
                            else outcome
                        )
                    self._writing = False
                    self._batching.notify_all()
        if isinstance(waiting.outcome, AuditUnavailable):
            raise waiting.outcome
        return waiting.outcome

    def _write_batch(self, batch: list[_Waiting]) -> list[RecordedEvent | AuditUnavailable]:
        """Commit ``batch`` in one transaction and return each event's outcome.

        Raises only what is not a database or value error (an interruption).
        """
        try:
            return list(self._commit(batch))
        except (IntegrityError, DataError) as e:
            if len(batch) == 1:
                return [_unavailable(e)]
        except (SQLAlchemyError, ValueError) as e:
            return [_unavailable(e) for _ in batch]
        # The database refused one of the events: write each alone, so only it fails.
        return [outcome for pending in batch for outcome in self._write_batch([pending])]

    def _commit(self, batch: list[_Waiting]) -> list[RecordedEvent]:
        """Append ``batch`` in order, in one transaction. Raises SQLAlchemyError, ValueError."""
        if self._engine.dialect.name == "postgresql" and self._guess_held:
            with self._engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                recorded = self._append_all_if_guessed(autocommit, batch)
            if recorded is not None:
                return recorded
        with self._engine.begin() as connection:
            return [self._append(connection, pending.event, pending.values) for pending in batch]

    def _append(
        self, connection: Connection, event: Event, values: tuple[str | None, ...]
    ) -> RecordedEvent:
        """Append one event in ``connection``'s transaction."""
        if connection.dialect.name == "postgresql":
            recorded = self._append_guessing(connection, event, values)
        else:
            # SECURITY: incrementing the counter first takes the lock that serialises
            # appends; the row it returns is the committed head, never a stale snapshot.
            sequence, previous = connection.execute(_NEXT_SEQUENCE).one()
            recorded, row = self._entry(sequence, previous, event, values)
            connection.execute(_INSERT_EVENT, row)
            connection.execute(_ADVANCE_HEAD, {"leaf_hash": recorded.leaf_hash})
        self._last_appended = (recorded.sequence, recorded.leaf_hash)
        self._appended_since_check += 1
        return recorded

    def _append_all_if_guessed(
        self, connection: Connection, batch: list[_Waiting]
    ) -> list[RecordedEvent] | None:
        """Append ``batch`` in one statement if the head is still our last event.

        The statement commits by itself: ``connection`` must be in autocommit mode.
        Returns None, having written nothing, when there is no guess or it is wrong.
        """
        guess = self._last_appended  # SECURITY: before the clock, as in _append_guessing
        if guess is None:
            return None
        guess_sequence, guess_leaf = guess
        parameters: dict[str, Any] = {"guess_sequence": guess_sequence, "guess_leaf": guess_leaf}
        recorded: list[RecordedEvent] = []
        previous = guess_leaf
        for i, pending in enumerate(batch):
            entry, row = self._entry(
                guess_sequence + 1 + i, previous, pending.event, pending.values
            )
            parameters.update({f"{name}_{i}": value for name, value in row.items()})
            recorded.append(entry)
            previous = entry.leaf_hash
        parameters["last_leaf"] = previous
        statement = self._compile(_insert_all_if_guessed(len(batch)))
        if _first_row(connection, statement, parameters) is None:
            self._guess_held = False
            return None
        self._last_appended = (recorded[-1].sequence, recorded[-1].leaf_hash)
        self._appended_since_check += len(batch)
        return recorded

    def _append_guessing(
        self, connection: Connection, event: Event, values: tuple[str | None, ...]
    ) -> RecordedEvent:
        """Append in one statement if the head is still our last event, else in two."""
        # SECURITY: the guess is read before the clock, and it names an event whose
        # time was read before the guess was stored, so an entry appended on a right
        # guess is never older than the event before it.
        guess = self._last_appended
        if guess is None:
            sequence, previous = connection.execute(_NEXT_SEQUENCE).one()
            self._guess_held = True  # nothing to guess from yet: try from now on
        else:
            guess_sequence, guess_leaf = guess
            recorded, row = self._entry(guess_sequence + 1, guess_leaf, event, values)
            row.update(guess_sequence=guess_sequence, guess_leaf=guess_leaf)
            claimed = _first_row(connection, self._compile(_CLAIM_AND_INSERT), row)
            if claimed is None:
                raise NoResultFound("the audit_head row is missing")
            sequence, head_leaf, inserted = claimed
            self._guess_held = inserted == 1
            if inserted:
                return recorded
            # A wrong guess: the counter was still incremented under the lock, and the
            # head's leaf hash left as that of the event before the claimed number.
            previous = head_leaf
        recorded, row = self._entry(sequence, previous, event, values)
        connection.execute(_INSERT_AND_ADVANCE, row)
        return recorded

    def _compile(self, statement: Select[Any]) -> Compiled:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = statement.compile(dialect=self._engine.dialect)
        return compiled

    def _entry(
        self, sequence: int, previous: bytes, event: Event, values: tuple[str | None, ...]
    ) -> tuple[RecordedEvent, dict[str, Any]]:
        """The event as number ``sequence`` after ``previous``, and its row's values.

        The time is read here, after the caller took the sequence lock (or read its
        guess), so times never run backwards along the sequence.
        """
        now = self._clock()
        if now.utcoffset() is None:
            raise ValueError("the clock returned a naive datetime")
        recorded_at = now.astimezone(UTC)
        entry = entry_from_values(sequence, format_time(recorded_at), previous.hex(), values)
        leaf = leaf_hash(entry)
        row: dict[str, Any] = dict(zip(PAYLOAD_FIELDS, values, strict=True))
        row.update(sequence=sequence, recorded_at=recorded_at, entry=entry, leaf_hash=leaf)
        return RecordedEvent(sequence, recorded_at, event, previous, entry, leaf), row

    # Checkpoints ------------------------------------------------------------------------

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The newest checkpoint in SQL, or None before the first one.

        Raises :class:`AuditUnavailable`, or :class:`AuditIntegrityError` if its signature does not
        verify.
        """
        try:
            with self._engine.connect() as connection:
                note = connection.execute(_LATEST_NOTE).scalar()
        except SQLAlchemyError as e:
            raise AuditUnavailable(f"cannot read audit checkpoints: {_reason(e)}") from e
        return None if note is None else self._verified(note)

    def checkpoint(self) -> SignedCheckpoint:
        """Seal every committed event: sign a checkpoint, store it in the object store, then SQL.

        The object-store copy is written first, so every checkpoint in SQL has its copy
        outside the database. Returns the latest checkpoint unchanged when it already
        covers every event (writing its copy again if that went missing). Raises
        :class:`AuditUnavailable` when the database or object store fails (nothing is
        then recorded in SQL), and :class:`AuditIntegrityError`, signing nothing, when the stored
        events no longer match the latest checkpoint or do not chain.
        """
        with self._tree_lock:
            try:
                latest, signed = self._sign()
            except SQLAlchemyError as e:
                raise AuditUnavailable(f"cannot read the audit log: {_reason(e)}") from e
            if signed is None:
                assert latest is not None
                self._publish(latest, replace=False)
                return latest
            self._publish(signed, replace=True)
            checkpoint = signed.checkpoint
            try:
                with self._engine.begin() as connection:
                    connection.execute(
                        insert(CHECKPOINTS).values(
                            tree_size=checkpoint.tree_size,
                            root_hash=checkpoint.root_hash,
                            signed_at=checkpoint.timestamp,
                            note=signed.note,
                        )
                    )
            except IntegrityError:
                # Another process sealed the same tree size first; its checkpoint seals
                # the same tree head, so it stands.
                winner = self.latest_checkpoint()
                if winner is None:
                    raise AuditUnavailable("a concurrent audit checkpoint vanished") from None
                return winner
            except SQLAlchemyError as e:
                raise AuditUnavailable(f"cannot write an audit checkpoint: {_reason(e)}") from e
            return signed

    def maybe_checkpoint(self) -> None:
        """Seal the log if a checkpoint is due; one cheap query when it is not.

        The query is made only once this object has appended ``checkpoint_every // 16``
        events (at least one) since the last, or a second has passed by the clock, so
        a busy process asks rarely and a checkpoint is made at most that late. Meant to
        run after a commit, so it never raises: the action it follows already happened
        and is recorded. A failure is logged and the next call, or
        ``satchel audit checkpoint``, tries again; ``satchel audit verify`` reports
        what a refusal to sign was about.
        """
        now = self._clock()
        if (
            self._appended_since_check < self._check_after
            and self._checked_at is not None
            and now - self._checked_at < _CHECK_INTERVAL
        ):
            return
        self._checked_at = now
        self._appended_since_check = 0
        try:
            with self._engine.connect() as connection:
                # One statement: autocommit spares the BEGIN and ROLLBACK round trips.
                connection.execution_options(isolation_level="AUTOCOMMIT")
                last, sealed, sealed_at = connection.execute(_PENDING).one()
            pending = last - (sealed or 0)
            if pending <= 0:
                return
            if (
                pending >= self._checkpoint_every
                or sealed_at is None
                or now - sealed_at >= self._checkpoint_interval
            ):
                self.checkpoint()
        except (SQLAlchemyError, AuditError) as e:
            reason = _reason(e) if isinstance(e, SQLAlchemyError) else str(e)
            _logger.warning("audit checkpoint not made: %s", reason)

    def _sign(self) -> tuple[SignedCheckpoint | None, SignedCheckpoint | None]:
        """The latest checkpoint, and a new one if events were committed since."""
        with self._engine.connect() as connection:
            size = connection.execute(_LOG_SIZE).scalar_one()
            note = connection.execute(_LATEST_NOTE).scalar()
            latest = None if note is None else self._verified(note)
            if latest is not None and latest.checkpoint.tree_size >= size:
                if latest.checkpoint.tree_size > size:
                    raise AuditIntegrityError(
                        f"the audit log ends at event {size} but checkpoint "
                        f"{latest.checkpoint.tree_size} sealed more: it was truncated "
                        "(run `satchel audit verify`)"
                    )
                return latest, None
            self._extend_tree(connection, size, None if latest is None else latest.checkpoint)
        checkpoint = Checkpoint(self._origin, size, self._tree.root(), self._clock())
        return latest, self._signer.sign(checkpoint)

    def _extend_tree(self, connection: Connection, size: int, latest: Checkpoint | None) -> None:
        """Grow the in-memory tree to ``size`` events, checking what it takes in.

        Events up to the latest checkpoint are taken by their stored leaf hashes and
        must reproduce its root. Later events are decoded and must chain: each names
        the leaf hash of the one before. Raises :class:`AuditIntegrityError` otherwise.
        """
        tree = self._tree
        if tree.size > size:
            raise AuditIntegrityError(
                f"the audit log ends at event {size}, but event {tree.size} was already "
                "sealed: it was truncated (run `satchel audit verify`)"
            )
        sealed = 0 if latest is None else latest.tree_size
        if tree.size < sealed:
            with connection.execute(
                select(EVENTS.c.sequence, EVENTS.c.leaf_hash)
                .where(EVENTS.c.sequence > tree.size, EVENTS.c.sequence <= sealed)
                .order_by(EVENTS.c.sequence)
                .execution_options(yield_per=_STREAM_BATCH)
            ) as rows:
                for sequence, stored_leaf in rows:
                    if (
                        sequence != tree.size + 1
                        or not isinstance(stored_leaf, bytes)
                        or len(stored_leaf) != len(GENESIS_HASH)
                    ):
                        break  # the root comparison below then fails
                    tree.append(stored_leaf)
                    self._tree_head = stored_leaf
        if latest is not None and sealed > 0:
            self._check_against(latest, sealed)
        with connection.execute(
            select(EVENTS.c.sequence, EVENTS.c.entry, EVENTS.c.leaf_hash)
            .where(EVENTS.c.sequence > tree.size, EVENTS.c.sequence <= size)
            .order_by(EVENTS.c.sequence)
            .execution_options(yield_per=_STREAM_BATCH)
        ) as rows:
            for sequence, entry, stored_leaf in rows:
                expected = tree.size + 1
                try:
                    decoded = decode_entry(entry)
                except ValueError:
                    decoded = None
                leaf = leaf_hash(entry) if decoded is not None else b""
                if (
                    sequence != expected
                    or decoded is None
                    or not decoded.canonical
                    or decoded.sequence != expected
                    or decoded.previous_hash != self._tree_head
                    or stored_leaf != leaf
                ):
                    raise AuditIntegrityError(
                        f"audit event {expected} does not chain to the events before it; "
                        "refusing to sign a checkpoint (run `satchel audit verify`)"
                    )
                tree.append(leaf)
                self._tree_head = leaf
        if tree.size != size:
            raise AuditIntegrityError(
                f"audit events up to {size} are not all present; refusing to sign a "
                "checkpoint (run `satchel audit verify`)"
            )

    def _check_against(self, latest: Checkpoint, sealed: int) -> None:
        """Raise :class:`AuditIntegrityError` unless the first ``sealed`` leaves give its root."""
        if self._tree.size == sealed and self._tree.root() == latest.root_hash:
            return
        if self._tree.size > sealed:
            return  # this process checked those events when it sealed or passed them
        # Start over next time: the tree no longer describes a log we can vouch for.
        self._tree = MerkleAccumulator()
        self._tree_head = GENESIS_HASH
        raise AuditIntegrityError(
            f"the stored audit events no longer match checkpoint {sealed}; refusing to "
            "sign a new one (run `satchel audit verify`)"
        )

    def _publish(self, signed: SignedCheckpoint, *, replace: bool) -> None:
        """Write ``signed`` to the object store (only if missing unless ``replace``)."""
        checkpoint = signed.checkpoint
        key = checkpoint_key(checkpoint.tree_size)
        retain_until = (
            None
            if self._retention_days is None
            else checkpoint.timestamp + timedelta(days=self._retention_days)
        )
        try:
            if not replace:
                try:
                    self._store.head(key)
                    return
                except ObjectNotFound:
                    pass
            self._store.put(
                key, io.BytesIO(signed.note), len(signed.note), retain_until=retain_until
            )
        except StorageError as e:
            raise AuditUnavailable(
                f"checkpoint {checkpoint.tree_size} could not be written to the object store: {e}"
            ) from e

    def _verified(self, note: bytes) -> SignedCheckpoint:
        try:
            checkpoint = self._verifier.verify(note)
        except ProofError as e:
            raise AuditIntegrityError(
                f"the latest audit checkpoint in SQL does not verify ({e}); "
                "run `satchel audit verify`"
            ) from e
        return SignedCheckpoint(checkpoint, note)

    # Reading ----------------------------------------------------------------------------

    def query(
        self,
        *,
        actor_email: str | None = None,
        student_id: str | None = None,
        document_id: str | None = None,
        action: Action | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        up_to_seq: int | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> Page[RecordedEvent]:
        """Events matching every given filter, newest first, one page at a time.

        Each event is read from its signed entry (the queryable columns only select).
        ``since`` is inclusive, ``until`` exclusive. Every page is read from a snapshot:
        only events numbered at most ``up_to_seq``, lowered to the log's head (the
        head when not given). The page's ``up_to_seq`` is that bound (0 for an empty
        log); passing it back for the other pages keeps their items and total fixed
        while events are appended. A page past the last is the last page (a stale
        link). Raises ``ValueError`` for a page below 1, ``per_page`` outside 1..500,
        an ``up_to_seq`` below 1 or a naive time; :class:`AuditUnavailable`;
        :class:`AuditIntegrityError` if a selected entry is damaged.
        """
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"page must be at least 1 and per_page between 1 and {MAX_PER_PAGE}")
        where = EventFilter(
            actor_email=actor_email,
            student_id=student_id,
            document_id=document_id,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            up_to_seq=up_to_seq,
        )
        try:
            with self._engine.connect() as connection:
                # The count and the page are separate statements; one bound at or below
                # the head makes them agree, whatever is appended in between.
                head = connection.execute(_LOG_SIZE).scalar_one()
                bound = head if up_to_seq is None else min(up_to_seq, head)
                clauses = [*where.clauses(), EVENTS.c.sequence <= bound]
                total = connection.execute(
                    select(func.count()).select_from(EVENTS).where(*clauses)
                ).scalar_one()
                page = min(page, last_page(total, per_page))
                entries = connection.execute(
                    select(EVENTS.c.sequence, EVENTS.c.entry)
                    .where(*clauses)
                    .order_by(EVENTS.c.sequence.desc())
                    .limit(per_page)
                    .offset((page - 1) * per_page)
                ).all()
        except SQLAlchemyError as e:
            raise AuditUnavailable(f"cannot read the audit log: {_reason(e)}") from e
        items = tuple(_recorded(sequence, entry) for sequence, entry in entries)
        return Page(items, page, per_page, total, bound)

    def events(self, where: EventFilter = EventFilter()) -> Iterator[RecordedEvent]:
        """Stream matching events oldest first, in bounded memory (for exports).

        Raises :class:`AuditUnavailable` and :class:`AuditIntegrityError` like :meth:`query`.
        """
        try:
            with (
                self._engine.connect() as connection,
                connection.execute(
                    select(EVENTS.c.sequence, EVENTS.c.entry)
                    .where(*where.clauses())
                    .order_by(EVENTS.c.sequence)
                    .execution_options(yield_per=_STREAM_BATCH)
                ) as rows,
            ):
                for sequence, entry in rows:
                    yield _recorded(sequence, entry)
        except SQLAlchemyError as e:
            raise AuditUnavailable(f"cannot read the audit log: {_reason(e)}") from e

    def get(self, sequence: int) -> RecordedEvent:
        """The event numbered ``sequence``. Raises :class:`EventNotFound`."""
        try:
            with self._engine.connect() as connection:
                entry = connection.execute(
                    select(EVENTS.c.entry).where(EVENTS.c.sequence == sequence)
                ).scalar()
        except SQLAlchemyError as e:
            raise AuditUnavailable(f"cannot read the audit log: {_reason(e)}") from e
        if entry is None:
            raise EventNotFound(sequence)
        return _recorded(sequence, entry)

    def prove(self, sequence: int) -> InclusionProof:
        """An RFC 9162 inclusion proof of event ``sequence`` in the latest checkpoint.

        Seals the log first if the event is not yet covered. Reads every leaf hash once,
        in bounded memory. Raises :class:`EventNotFound`, :class:`AuditUnavailable`, and
        :class:`AuditIntegrityError` if the stored events no longer match the checkpoint.
        """
        recorded = self.get(sequence)
        signed = self.checkpoint()
        size, root = signed.checkpoint.tree_size, signed.checkpoint.root_hash
        if sequence > size:
            raise EventNotFound(sequence)
        index = sequence - 1
        ranges = _audit_path_ranges(index, size)
        subtrees = [MerkleAccumulator() for _ in ranges]
        whole = MerkleAccumulator()
        try:
            with (
                self._engine.connect() as connection,
                connection.execute(
                    select(EVENTS.c.leaf_hash)
                    .where(EVENTS.c.sequence <= size)
                    .order_by(EVENTS.c.sequence)
                    .execution_options(yield_per=_STREAM_BATCH)
                ) as rows,
            ):
                # The ranges are disjoint and sorted by start, so each leaf feeds at most
                # one of them, found by walking a cursor forward.
                order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
                cursor = 0
                for position, (stored_leaf,) in enumerate(rows):
                    whole.append(stored_leaf)
                    while cursor < len(order) and ranges[order[cursor]][1] <= position:
                        cursor += 1
                    if cursor < len(order) and ranges[order[cursor]][0] <= position:
                        subtrees[order[cursor]].append(stored_leaf)
        except SQLAlchemyError as e:
            raise AuditUnavailable(f"cannot read the audit log: {_reason(e)}") from e
        except (ValueError, TypeError) as e:  # a stored leaf hash that is not 32 bytes
            raise AuditIntegrityError(f"a stored leaf hash is damaged: {e}") from e
        if whole.size != size or whole.root() != root:
            raise AuditIntegrityError(
                f"the stored audit events no longer match checkpoint {size} "
                "(run `satchel audit verify`)"
            )
        hashes = tuple(subtree.root() for subtree in subtrees)
        try:
            # Never hand out a proof that does not verify.
            verify_inclusion(recorded.leaf_hash, index, size, hashes, root)
        except ProofError as e:
            raise AuditIntegrityError(
                f"event {sequence} does not match checkpoint {size}: {e}"
            ) from e
        return InclusionProof(recorded, signed, hashes)

    def verify(
        self, *, workers: int = 1, progress: Callable[[int, int], None] | None = None
    ) -> VerifyReport:
        """Recompute the chain, tree and signatures; see :func:`audit.verify.verify_log`."""
        return verify_log(
            self._engine,
            self._verifier,
            self._store,
            self._origin,
            workers=workers,
            progress=progress,
        )

    def public_key_pem(self) -> bytes:
        """The checkpoint verification key, PEM SubjectPublicKeyInfo."""
        return self._signer.public_key_pem()


def _recorded(sequence: int, entry: bytes) -> RecordedEvent:
    try:
        decoded = decode_entry(entry)
    except ValueError as e:
        raise AuditIntegrityError(
            f"audit event {sequence} is damaged ({e}); run `satchel audit verify`"
        ) from e
    return RecordedEvent(
        decoded.sequence,
        decoded.recorded_at,
        decoded.event,
        decoded.previous_hash,
        entry,
        leaf_hash(entry),
    )


def _audit_path_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[start, end)`` whose tree hashes form ``PATH(index, D[size])``.

    RFC 9162 §2.1.3.1: at each level the path takes the hash of the half not holding
    ``index``; collected top-down, returned bottom-up as the proof lists them.
    """
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        half = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + half:
            ranges.append((start + half, end))
            end = start + half
        else:
            ranges.append((start, start + half))
            start += half
    ranges.reverse()
    return ranges
