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
import multiprocessing
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from itertools import islice
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    create_engine,
    func,
    select,
    type_coerce,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

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

__all__ = [
    "CHECKPOINT_PREFIX",
    "Problem",
    "VerifyReport",
    "checkpoint_key",
    "verify_log",
]

CHECKPOINT_PREFIX = "audit/checkpoints/"
_CHECKPOINT_NAME = re.compile(r"([0-9]{20})\.note")
_LOOKAHEAD = 16
# Rows fetched at a time: about 600 KB, which stays in the CPU's cache while it is
# checked, and lets the server produce the next rows meanwhile (10,000 at a time was
# a sixth slower in one process).
_BATCH = 1_000


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
    engine: Engine,
    verifier: CheckpointVerifier,
    store: ObjectStore,
    origin: str,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify every event and checkpoint of the log in ``engine`` and ``store``.

    With ``workers`` > 1, a log of at least ``PARALLEL_MIN_EVENTS`` events in a database
    file or server is checked in that many processes, chunk by chunk (see
    :func:`_parallel_scan`); the report is the same as from one process. ``progress``
    is called with (events checked, events in the log) as the check goes on: after
    every chunk, or every ``_PROGRESS_EVERY`` events in one process. Raises
    :class:`AuditUnavailable` if the database or the object store cannot be read; every
    integrity failure is reported, not raised.
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
        fast = None
        if workers > 1 and counted is not None and counted >= PARALLEL_MIN_EVENTS:
            fast = _parallel_scan(engine, counted, seals, workers, progress)
        with engine.connect() as connection:
            if fast is not None:
                finding = None
                scan.verified, scan.last_leaf = fast
            else:
                # Closed at once when the scan stops early, so the connection is free.
                with closing(_rows(connection)) as rows:
                    if progress is None or counted is None:
                        finding = scan.run(rows)
                    else:
                        finding = scan.run(_counting(rows, progress, counted))
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


def _rows(
    connection: Connection, first: int | None = None, last: int | None = None
) -> Generator[Sequence[Any], None, None]:
    """Every event row in sequence order, as plain driver tuples, in bounded memory.

    ``first`` and ``last`` (inclusive) limit the sequence numbers read.

    Verification is bound by the client's CPU per row, so this bypasses SQLAlchemy's
    result objects. On PostgreSQL it streams in psycopg's binary format and chunked-rows
    mode, so the server produces rows while the client checks the previous ones;
    together this halves the time per row compared with a SQLAlchemy result.
    """
    statement = select(*_row_columns(connection.dialect.name)).order_by(EVENTS.c.sequence)
    if first is not None:
        statement = statement.where(EVENTS.c.sequence >= first)
    if last is not None:
        statement = statement.where(EVENTS.c.sequence <= last)
    # The statement's only literals are the two constant format strings above and the
    # two integer bounds.
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


def _counting(
    rows: Iterator[Sequence[Any]], progress: Callable[[int, int], None], total: int
) -> Iterator[Sequence[Any]]:
    """``rows``, calling ``progress`` every ``_PROGRESS_EVERY`` of them."""
    for count, row in enumerate(rows, start=1):
        if count % _PROGRESS_EVERY == 0:
            progress(count, total)
        yield row


def _stored_leaf(engine: Engine, sequence: int) -> bytes | None:
    if sequence == 0:
        return GENESIS_HASH
    with engine.connect() as connection:
        found: bytes | None = connection.execute(
            select(EVENTS.c.leaf_hash).where(EVENTS.c.sequence == sequence)
        ).scalar()
        return found


@dataclass(frozen=True)
class _Checked:
    """Where :func:`_check_rows` stopped: the next sequence number it expected, the
    leaf hash of the last event it verified, and the row that failed, if one did."""

    next_sequence: int
    last_leaf: bytes
    bad_row: Sequence[Any] | None


def _check_rows(
    rows: Iterator[Sequence[Any]],
    first: int,
    previous: bytes,
    tree: MerkleAccumulator,
    marks: Sequence[int],
    at_mark: Callable[[int, MerkleAccumulator], bool],
) -> _Checked:
    """The fast path: check consecutive rows from event ``first`` on, chaining from
    ``previous``, appending each leaf to ``tree``.

    A row must carry the expected sequence number, an entry that is exactly the
    canonical encoding of its columns and of ``previous``, and the leaf hash of that
    entry. After each event whose number is in ``marks`` (ascending), ``at_mark(size,
    tree)`` runs; it returns False to stop. Stops at the first row that fails.
    """
    sha256 = hashlib.sha256
    append = tree.append
    marks = [*marks, -1]  # sentinel: no further mark
    mark_index = 0
    next_mark = marks[0]
    expected = first
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
        except (TypeError, ValueError):  # SQLite keeps whatever type a DBA writes
            intact = False
        if not intact:
            return _Checked(expected, previous, row)
        append(leaf)
        previous = leaf
        if expected == next_mark:
            if not at_mark(expected, tree):
                return _Checked(expected + 1, previous, None)
            mark_index += 1
            next_mark = marks[mark_index]
        expected += 1
    return _Checked(expected, previous, None)


PARALLEL_MIN_EVENTS = 1 << 19
_PROGRESS_EVERY = 1 << 16  # events between progress reports of a scan in one process
"""Below this many events one process verifies about as fast as several, which take
about half a second to start."""
_CHUNK_HEIGHT_MIN = 14


@dataclass(frozen=True)
class _ChunkJob:
    """Events ``first``..``last`` (None: to the end of the log) of the log at ``url``."""

    url: str
    first: int
    last: int | None
    marks: tuple[int, ...]


@dataclass(frozen=True)
class _ChunkResult:
    """A chunk that passed the fast path (``ok``), or one that did not.

    ``previous`` is the stored leaf hash of the event before the chunk, which it chained
    from; ``stack`` the compact range of the chunk's own leaves, and ``at_marks`` that
    range after each checkpoint size inside the chunk.
    """

    ok: bool
    previous: bytes
    count: int
    last_leaf: bytes
    stack: tuple[bytes, ...]
    at_marks: dict[int, tuple[bytes, ...]]


def _check_chunk(job: _ChunkJob) -> _ChunkResult:
    """Run the fast path over one chunk, in a worker process."""
    engine = create_engine(job.url, poolclass=NullPool)
    try:
        if job.first == 1:
            previous: bytes | None = GENESIS_HASH
        else:
            previous = _stored_leaf(engine, job.first - 1)
        if not isinstance(previous, bytes) or len(previous) != len(GENESIS_HASH):
            return _ChunkResult(False, b"", 0, b"", (), {})
        at_marks: dict[int, tuple[bytes, ...]] = {}

        def at_mark(size: int, tree: MerkleAccumulator) -> bool:
            at_marks[size] = tree.stack
            return True

        tree = MerkleAccumulator()
        with (
            engine.connect() as connection,
            closing(_rows(connection, job.first, job.last)) as rows,
        ):
            checked = _check_rows(rows, job.first, previous, tree, job.marks, at_mark)
    finally:
        engine.dispose()
    return _ChunkResult(
        checked.bad_row is None,
        previous,
        checked.next_sequence - job.first,
        checked.last_leaf,
        tree.stack,
        at_marks,
    )


def _parallel_scan(
    engine: Engine,
    counted: int,
    seals: dict[int, Checkpoint],
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, bytes] | None:
    """The fast path over the whole log in ``workers`` processes.

    The log is cut into chunks of ``2**h`` events, so that each chunk is a perfect
    subtree of the Merkle tree: a worker checks one chunk's rows and chain from the
    stored leaf hash of the event before it, and returns the chunk's compact range (and
    that range at every checkpoint size inside it). Joining them in order here checks
    that each chunk chains from the last leaf of the one before, rebuilds the tree
    (:meth:`MerkleAccumulator.append_subtree`) and compares the root at every checkpoint.

    Returns (events verified, leaf hash of the last one) when everything verifies, or
    None if anything failed or cannot run this way (an in-memory database); the caller
    then scans in one process, which names the first problem and where it is.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    # At least 16 chunks per process, so that none is left with a long one at the end.
    height = max(_CHUNK_HEIGHT_MIN, (counted // (16 * workers)).bit_length() - 1)
    size = 1 << height
    firsts = list(range(1, counted + 1, size))
    marks = sorted(mark for mark in seals if mark > 0)
    jobs = [
        _ChunkJob(
            url.render_as_string(hide_password=False),
            first,
            None if index == len(firsts) - 1 else first + size - 1,
            tuple(
                mark
                for mark in marks
                if mark >= first and (index == len(firsts) - 1 or mark < first + size)
            ),
        )
        for index, first in enumerate(firsts)
    ]
    checked = 0
    checked_lock = threading.Lock()

    def chunk_done(job: _ChunkJob) -> None:
        nonlocal checked
        if progress is not None:
            with checked_lock:
                checked += (counted if job.last is None else job.last) - job.first + 1
                progress(checked, counted)

    try:
        results = _check_chunks(jobs, workers, chunk_done)
    except Exception:  # the scan in one process is the authority
        # A worker that could not start, read or report back: the caller's scan
        # then reads the log itself, and raises or reports what is wrong.
        return None
    prefix = MerkleAccumulator()
    last_leaf = GENESIS_HASH
    for job, result in zip(jobs, results, strict=True):
        if not result.ok or result.previous != last_leaf:
            return None
        for mark, stack in result.at_marks.items():
            joined = prefix.copy()
            within = mark - job.first + 1
            heights = [bit for bit in reversed(range(height + 1)) if within >> bit & 1]
            for node, bit in zip(stack, heights, strict=True):
                joined.append_subtree(node, bit)
            if joined.root() != seals[mark].root_hash:
                return None
        last_leaf = result.last_leaf
        if job.last is not None:
            if result.count != size:
                return None
            (whole,) = result.stack
            prefix.append_subtree(whole, height)
    return prefix.size + results[-1].count, last_leaf


def _check_chunks(
    jobs: list[_ChunkJob], workers: int, done: Callable[[_ChunkJob], None]
) -> list[_ChunkResult]:
    """:func:`_check_chunk` of every job, in order, in ``workers`` processes: this one
    and ``workers - 1`` started for the purpose. ``done`` is called with each job
    checked, from this thread or the pool's.

    The started processes take jobs from the front while this one takes them from the
    back, so it works while they are still starting (a fresh interpreter takes about
    half a second to import what a chunk needs; a fork, a few milliseconds). Raises
    what a worker raised.
    """
    # Forking starts a worker at once, with everything imported, but a process that
    # runs other threads may fork while one of them holds a lock the child then needs.
    # The command line runs none; anything else gets fresh interpreters.
    method = "fork" if threading.active_count() == 1 else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(min(workers - 1, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(_check_chunk, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            future.add_done_callback(partial(_report_done, done, job))
        done_here: dict[int, _ChunkResult] = {}
        # A job the pool has not handed out yet can be cancelled and run here; once one
        # cannot, the pool has handed out every job before it too.
        for index in reversed(range(len(jobs))):
            if not futures[index].cancel():
                break
            done_here[index] = _check_chunk(jobs[index])
            done(jobs[index])
        return [
            done_here[index] if index in done_here else future.result()
            for index, future in enumerate(futures)
        ]


def _report_done(
    done: Callable[[_ChunkJob], None], job: _ChunkJob, future: Future[_ChunkResult]
) -> None:
    if not future.cancelled():  # a cancelled job is checked here, and reported then
        done(job)


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
        marks = sorted(size for size in self._seals if size > 0)
        last_good_mark = 0
        bad_mark: int | None = None

        def at_mark(size: int, tree: MerkleAccumulator) -> bool:
            nonlocal last_good_mark, bad_mark
            if tree.root() != self._seals[size].root_hash:
                bad_mark = size
                return False
            last_good_mark = size
            return True

        checked = _check_rows(rows, 1, GENESIS_HASH, MerkleAccumulator(), marks, at_mark)
        if bad_mark is not None:
            self.verified = last_good_mark
            return _Finding(
                last_good_mark + 1,
                Problem.EDITED,
                f"events {last_good_mark + 1}..{bad_mark} do not match the signed "
                f"checkpoint for tree size {bad_mark}: history was rewritten "
                "(entries and hashes recomputed)",
            )
        self.verified = checked.next_sequence - 1
        if checked.bad_row is not None:
            return self._diagnose(
                checked.next_sequence,
                checked.last_leaf,
                checked.bad_row,
                list(islice(rows, _LOOKAHEAD)),
            )
        self.last_leaf = checked.last_leaf
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
