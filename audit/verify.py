"""Verification of the whole audit log against its hashes and signed checkpoints.

:func:`verify_log` streams every event once, in sequence order, and checks that

1. the sequence numbers run 1, 2, … without a gap;
2. each entry is exactly the canonical encoding of its row's columns, its own sequence
   number and the leaf hash of the event before (so an edit to a column, to the entry,
   or to the order of rows is caught);
3. each stored leaf hash is ``SHA-256(0x00 || entry)``;
4. the RFC 9162 tree over the leaves reproduces the root of every signed checkpoint, in
   SQL and in the object store (so a DBA who recomputes every hash after an edit is
   caught at the next checkpoint);
5. every checkpoint's Ed25519 signature verifies and no checkpoint covers more events
   than the log holds (so deleting the newest events, and their SQL checkpoints, is
   caught through the object-store copy).

On the first failure it looks at a few neighbouring rows to name what happened (edited,
deleted, inserted, reordered, truncated, bad signature) and the first sequence number
affected. Events after the newest checkpoint are protected by the hash chain alone: a
DBA who rewrites all of them consistently is caught only once a checkpoint has sealed
them, which is why checkpoints are made every few minutes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, String, func, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from audit.checkpoint import Checkpoint, CheckpointVerifier
from audit.errors import AuditUnavailable, ProofError
from audit.events import (
    GENESIS_HASH,
    PAYLOAD_FIELDS,
    DecodedEntry,
    decode_entry,
    entry_from_values,
    event_values,
    format_time,
)
from audit.merkle import MerkleAccumulator
from audit.models import CHECKPOINTS, EVENTS, HEAD
from storage.errors import StorageError
from storage.objects import ObjectStore

__all__ = ["CHECKPOINT_PREFIX", "Problem", "VerifyReport", "checkpoint_key", "verify_log"]

CHECKPOINT_PREFIX = "audit/checkpoints/"
_CHECKPOINT_NAME = re.compile(r"([0-9]{20})\.note")
_LOOKAHEAD = 16
_BATCH = 10_000


def checkpoint_key(tree_size: int) -> str:
    """The object-store key of the checkpoint sealing ``tree_size`` events."""
    return f"{CHECKPOINT_PREFIX}{tree_size:020d}.note"


class Problem(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification.

    ``events_checked`` counts the events verified in order before any problem.
    ``first_bad_sequence`` is the first event the log can no longer vouch for (for a
    bad checkpoint: the tree size it claims); ``latest_checkpoint`` is the newest
    checkpoint whose signature verified. ``warnings`` note gaps that are not tampering
    with events, such as a checkpoint missing from one of its two homes.
    """

    ok: bool
    events_checked: int
    checkpoints_checked: int
    first_bad_sequence: int | None
    problem: Problem | None
    detail: str
    latest_checkpoint: Checkpoint | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Finding:
    sequence: int
    problem: Problem
    detail: str


def verify_log(
    engine: Engine, verifier: CheckpointVerifier, store: ObjectStore, origin: str
) -> VerifyReport:
    """Verify every event and checkpoint of the log in ``engine`` and ``store``.

    Raises :class:`AuditUnavailable` if the database or the object store cannot be
    read; every integrity failure is reported, not raised.
    """
    warnings: list[str] = []
    findings: list[_Finding] = []
    head = select(HEAD.c.last_sequence, HEAD.c.last_leaf_hash)
    try:
        # Appends and checkpoints may run meanwhile. A checkpoint goes to the object
        # store first, then to SQL, so SQL is read before the store is listed: a copy
        # missing then is really missing. (A copy SQL lacks may be one being written;
        # it seals like any other.) The counter is read before the scan and again after
        # it: every event it counted is committed, so the scan must see it.
        with engine.connect() as connection:
            counted, head_leaf = _counter(connection.execute(head).one_or_none())
            sql_rows = connection.execute(
                select(
                    CHECKPOINTS.c.tree_size, CHECKPOINTS.c.root_hash, CHECKPOINTS.c.note
                ).order_by(CHECKPOINTS.c.tree_size)
            ).all()
        stored = _list_checkpoints(store, warnings)
        seals, checked = _collect_checkpoints(
            sql_rows, stored, verifier, store, origin, findings, warnings
        )
        scan = _Scan(seals, lambda sequence: _stored_leaf(engine, sequence))
        with engine.connect() as connection:
            # Closed at once when the scan stops early, so the connection is free again.
            with closing(_rows(connection)) as rows:
                finding = scan.run(rows)
            counted_after, _ = _counter(connection.execute(head).one_or_none())
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as e:
        # The scan reads through the driver directly (see _rows), so its errors too.
        raise AuditUnavailable(f"cannot read the audit log: {type(e).__name__}") from e
    except StorageError as e:
        raise AuditUnavailable(f"cannot read audit checkpoints from the object store: {e}") from e
    missing = sorted({row[0] for row in sql_rows} - set(stored))
    if missing:
        warnings.append(
            f"{len(missing)} SQL checkpoint(s) have no object-store copy "
            f"(first: tree size {missing[0]})"
        )
    verified = scan.verified
    if finding is not None:
        findings.append(finding)
    elif max(seals, default=0) > verified:
        findings.append(
            _Finding(
                verified + 1,
                Problem.TRUNCATED,
                f"the log ends at event {verified} but a signed checkpoint covers "
                f"{max(seals)} events: the newest events were deleted",
            )
        )
    elif counted is None or counted_after is None:
        warnings.append("the sequence counter row (audit_head) is missing or damaged")
    elif counted > verified:
        findings.append(
            _Finding(
                verified + 1,
                Problem.TRUNCATED,
                f"the log ends at event {verified} but {counted} sequence numbers were "
                "handed out: the newest events were deleted",
            )
        )
    elif counted == verified and head_leaf != scan.last_leaf:
        findings.append(
            _Finding(
                verified + 1,
                Problem.TRUNCATED,
                f"the sequence counter names a different event {counted} than the log "
                "holds: newer events were deleted and the counter rolled back",
            )
        )
    elif counted_after < verified:
        warnings.append(
            f"the sequence counter ({counted_after}) is behind the log ({verified}); "
            "appends fail until it is repaired"
        )
    latest = seals[max(seals)] if seals else None
    if not findings:
        sealed = f"; newest checkpoint seals {latest.tree_size}" if latest else ""
        return VerifyReport(
            ok=True,
            events_checked=verified,
            checkpoints_checked=checked,
            first_bad_sequence=None,
            problem=None,
            detail=f"{verified} events and {checked} checkpoints verified{sealed}",
            latest_checkpoint=latest,
            warnings=tuple(warnings),
        )
    first = min(findings, key=lambda f: f.sequence)
    return VerifyReport(
        ok=False,
        events_checked=verified,
        checkpoints_checked=checked,
        first_bad_sequence=first.sequence,
        problem=first.problem,
        detail=first.detail,
        latest_checkpoint=latest,
        warnings=tuple(warnings),
    )


def _counter(row: Sequence[Any] | None) -> tuple[int | None, bytes | None]:
    """The audit_head row as (last sequence, last leaf hash); None for a damaged one."""
    if row is None or type(row[0]) is not int or not isinstance(row[1], bytes):
        return None, None
    return row[0], row[1]


def _list_checkpoints(store: ObjectStore, warnings: list[str]) -> dict[int, str]:
    """The object store's checkpoint keys by tree size. Raises :class:`StorageError`."""
    stored: dict[int, str] = {}
    for info in store.list(CHECKPOINT_PREFIX):
        match = _CHECKPOINT_NAME.fullmatch(info.key[len(CHECKPOINT_PREFIX) :])
        if match is None:
            warnings.append(f"unexpected object {info.key!r} among the checkpoints")
            continue
        stored[int(match.group(1))] = info.key
    return stored


def _collect_checkpoints(
    sql_rows: Sequence[Any],
    stored: dict[int, str],
    verifier: CheckpointVerifier,
    store: ObjectStore,
    origin: str,
    findings: list[_Finding],
    warnings: list[str],
) -> tuple[dict[int, Checkpoint], int]:
    """Every checkpoint whose signature verifies, by tree size, and how many were checked.

    SQL holds them all; of the object-store copies (``stored``, listed after the SQL
    rows were read, so each SQL row has its copy unless one was deleted), the newest is
    read, since it seals the most, and any that SQL lacks, since SQL rows are easier to
    delete than retained objects. Raises :class:`StorageError`.
    """
    seals: dict[int, Checkpoint] = {}
    checked = 0
    for size, root, note in sql_rows:
        checked += 1
        checkpoint = _checked_note(verifier, note, origin, size, "SQL", findings)
        if checkpoint is None:
            continue
        if checkpoint.root_hash != root:
            findings.append(
                _Finding(
                    size,
                    Problem.BAD_SIGNATURE,
                    f"the SQL checkpoint row for tree size {size} has a root hash its "
                    "signed note does not carry",
                )
            )
            continue
        seals[size] = checkpoint
    in_sql = {row[0] for row in sql_rows}
    wanted = {size for size in stored if size not in in_sql}
    if stored:
        wanted.add(max(stored))
    for size in sorted(wanted):
        with store.open(stored[size]) as stream:
            note = stream.read()
        checked += 1
        checkpoint = _checked_note(verifier, note, origin, size, "object-store", findings)
        if checkpoint is None:
            continue
        known = seals.get(size)
        if known is not None and known.root_hash != checkpoint.root_hash:
            findings.append(
                _Finding(
                    size,
                    Problem.BAD_SIGNATURE,
                    f"two signed checkpoints for tree size {size} disagree on the root",
                )
            )
            continue
        seals.setdefault(size, checkpoint)
    return seals, checked


def _checked_note(
    verifier: CheckpointVerifier,
    note: object,
    origin: str,
    size: int,
    where: str,
    findings: list[_Finding],
) -> Checkpoint | None:
    try:
        if not isinstance(note, bytes):
            raise ProofError("the note is not stored as bytes")
        checkpoint = verifier.verify(note)
    except ProofError as e:
        findings.append(
            _Finding(
                size,
                Problem.BAD_SIGNATURE,
                f"the {where} checkpoint for tree size {size} does not verify: {e}",
            )
        )
        return None
    if checkpoint.origin != origin or checkpoint.tree_size != size:
        findings.append(
            _Finding(
                size,
                Problem.BAD_SIGNATURE,
                f"the {where} checkpoint filed under tree size {size} is signed for "
                f"{checkpoint.origin} at tree size {checkpoint.tree_size}",
            )
        )
        return None
    return checkpoint


def _row_columns(dialect: str) -> list[ColumnElement[Any]]:
    """sequence, time text, the payload columns in entry order, entry, leaf hash."""
    if dialect == "postgresql":
        time_text: ColumnElement[Any] = func.to_char(
            func.timezone("UTC", EVENTS.c.recorded_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
        )
    else:
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'. Formatting
        # in SQL spares verification a datetime object per row.
        time_text = func.replace(type_coerce(EVENTS.c.recorded_at, String), " ", "T").concat("Z")
    return [
        EVENTS.c.sequence,
        time_text,
        *(EVENTS.c[name] for name in PAYLOAD_FIELDS),
        EVENTS.c.entry,
        EVENTS.c.leaf_hash,
    ]


def _rows(connection: Connection) -> Generator[Sequence[Any], None, None]:
    """Every event row in sequence order, as plain driver tuples, in bounded memory.

    Verification is bound by the client's CPU per row, so this bypasses SQLAlchemy's
    result objects. On PostgreSQL it streams in psycopg's binary format and chunked-rows
    mode, so the server produces rows while the client checks the previous ones;
    together this halves the time per row compared with a SQLAlchemy result.
    """
    statement = select(*_row_columns(connection.dialect.name)).order_by(EVENTS.c.sequence)
    # The statement's only literals are the two constant format strings above.
    sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "postgresql":
        with driver.cursor(binary=True) as cursor:
            yield from cursor.stream(sql, size=_BATCH)
        return
    cursor = driver.cursor()
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(_BATCH):
            yield from batch
    finally:
        cursor.close()


def _stored_leaf(engine: Engine, sequence: int) -> bytes | None:
    if sequence == 0:
        return GENESIS_HASH
    with engine.connect() as connection:
        found: bytes | None = connection.execute(
            select(EVENTS.c.leaf_hash).where(EVENTS.c.sequence == sequence)
        ).scalar()
        return found


class _Scan:
    """One pass over the rows: the fast path checks, then the diagnosis of a failure."""

    def __init__(
        self, seals: dict[int, Checkpoint], stored_leaf: Callable[[int], bytes | None]
    ) -> None:
        self._seals = seals
        self._stored_leaf = stored_leaf
        self.verified = 0
        self.last_leaf = GENESIS_HASH

    def run(self, rows: Iterator[Sequence[Any]]) -> _Finding | None:
        """Check ``rows`` in order; return the first problem, or None."""
        sha256 = hashlib.sha256
        tree = MerkleAccumulator()
        append = tree.append
        marks = sorted(size for size in self._seals if size > 0)
        marks.append(-1)  # sentinel: no further checkpoint
        mark_index, next_mark, last_good_mark = 0, marks[0], 0
        expected, previous = 1, GENESIS_HASH
        for row in rows:
            sequence = row[0]
            entry = row[16]
            try:
                leaf = sha256(b"\x00" + entry).digest()
                intact = (
                    sequence == expected
                    and entry == entry_from_values(sequence, row[1], previous.hex(), row[2:16])
                    and leaf == row[17]
                )
            except TypeError:  # SQLite keeps whatever type a DBA writes into a column
                intact = False
            if not intact:
                self.verified = expected - 1
                return self._diagnose(expected, previous, row, list(islice(rows, _LOOKAHEAD)))
            append(leaf)
            previous = leaf
            if expected == next_mark:
                if tree.root() != self._seals[expected].root_hash:
                    self.verified = last_good_mark
                    return _Finding(
                        last_good_mark + 1,
                        Problem.EDITED,
                        f"events {last_good_mark + 1}..{expected} do not match the signed "
                        f"checkpoint for tree size {expected}: history was rewritten "
                        "(entries and hashes recomputed)",
                    )
                last_good_mark = expected
                mark_index += 1
                next_mark = marks[mark_index]
            expected += 1
        self.verified = expected - 1
        self.last_leaf = previous
        return None

    def _diagnose(
        self,
        expected: int,
        previous: bytes,
        first: Sequence[Any],
        following: list[Sequence[Any]],
    ) -> _Finding:
        """Name what happened at ``expected``, the first row that failed the fast path.

        ``previous`` is the verified leaf hash of event ``expected - 1``.
        """
        n = expected
        row = _Row(first)
        entry = row.decoded
        if entry is not None and entry.sequence == n and entry.previous_hash == previous:
            return _Finding(n, Problem.EDITED, f"event {n}: {row.difference(n)}")
        if entry is not None and entry.sequence == n:
            if n == 1:
                return _Finding(1, Problem.EDITED, "event 1 names a predecessor")
            return _Finding(
                n - 1,
                Problem.EDITED,
                f"event {n - 1} was changed after event {n} was appended: event {n} "
                f"records a different hash for it",
            )
        if entry is not None and entry.sequence < n:
            if self._stored_leaf(entry.sequence) == row.leaf:
                return _Finding(
                    n,
                    Problem.INSERTED,
                    f"the row at position {row.sequence} is a copy of event {entry.sequence}",
                )
            if self._stored_leaf(entry.sequence - 1) == entry.previous_hash:
                return _Finding(
                    entry.sequence,
                    Problem.INSERTED,
                    f"{_rows_at(entry.sequence, n - 1)} not part of this log: the original "
                    f"event {entry.sequence} follows at position {row.sequence}",
                )
            return _Finding(
                n,
                Problem.REORDERED,
                f"position {row.sequence} holds event {entry.sequence}",
            )
        later = [_Row(other) for other in following]
        found = next(
            (other for other in later if other.decoded is not None and other.decoded.sequence == n),
            None,
        )
        if found is not None:
            if entry is not None and entry.sequence > n:
                return _Finding(
                    n,
                    Problem.REORDERED,
                    f"event {n} is stored at position {found.sequence}, and position "
                    f"{row.sequence} holds event {entry.sequence}",
                )
            return _Finding(
                n,
                Problem.INSERTED,
                f"{_rows_at(row.sequence, found.sequence - 1)} not part of this log: "
                f"event {n} follows at position {found.sequence}",
            )
        if entry is not None and entry.sequence > n:
            return _Finding(n, Problem.DELETED, _missing(n, entry.sequence - 1))
        if row.sequence > n:
            return _Finding(n, Problem.DELETED, _missing(n, row.sequence - 1))
        return _Finding(n, Problem.EDITED, f"event {n}: the entry is not a valid audit entry")


def _rows_at(first: int, last: int) -> str:
    if first == last:
        return f"the row at position {first} is"
    return f"the rows at positions {first}..{last} are"


def _missing(first: int, last: int) -> str:
    return f"event {first} is missing" if first == last else f"events {first}..{last} are missing"


class _Row:
    """A row that failed the fast path, with what its entry says about itself."""

    def __init__(self, row: Sequence[Any]) -> None:
        # On SQLite a DBA can store any type in any column; what is not of the type
        # written counts as a value that matches nothing.
        self.sequence: int = row[0] if type(row[0]) is int else -1
        self.time_text: object = row[1]
        self.values: tuple[object, ...] = tuple(row[2:16])
        entry = row[16]
        self.entry: bytes = entry if isinstance(entry, bytes) else b""
        self.stored_leaf: object = row[17]
        self.leaf = hashlib.sha256(b"\x00" + self.entry).digest()
        self.decoded: DecodedEntry | None
        try:
            self.decoded = decode_entry(self.entry)
        except ValueError:
            self.decoded = None

    def difference(self, n: int) -> str:
        """What differs in a row whose entry is event ``n`` in its right place."""
        decoded = self.decoded
        assert decoded is not None
        if self.sequence != n:
            return f"the sequence column says {self.sequence}, the signed entry {n}"
        if not decoded.canonical:
            return "the entry is not in canonical form (it was edited)"
        if self.time_text != format_time(decoded.recorded_at):
            return "column recorded_at differs from the signed entry"
        for name, column, signed in zip(
            PAYLOAD_FIELDS, self.values, event_values(decoded.event), strict=True
        ):
            if column != signed:
                return f"column {name} differs from the signed entry"
        if self.stored_leaf != self.leaf:
            return "the stored leaf hash is not the hash of the entry"
        return "the row does not match its signed entry"
