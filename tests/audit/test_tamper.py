"""`audit verify` catches what a database administrator could do to the log with raw SQL.

Every scenario first gets the append-only triggers out of the way (dropped on SQLite,
disabled on PostgreSQL), as a DBA would have to, then edits, deletes, inserts, reorders
or truncates rows, or forges a checkpoint. Verification must fail and name the first
bad sequence number and the kind of tampering.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from sqlalchemy import Engine, text

import audit.verify
from audit.checkpoint import Checkpoint, CheckpointSigner
from audit.events import Action, Event, Outcome, encode_entry
from audit.log import AuditLog, checkpoint_key
from audit.verify import Problem, VerifyReport
from storage.objects import LocalObjectStore

ORIGIN = "school.example/audit"
SEALS = (16, 32, 40)  # checkpoints of the sealed_log fixture


class Clock:
    """A settable clock; each reading moves it forward by ``step``."""

    def __init__(self, step: timedelta = timedelta(milliseconds=500)) -> None:
        # A whole second plus 0.5 s steps: times with and without a fraction.
        self.now = datetime(2025, 9, 1, 7, 30, tzinfo=UTC)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def sample_event(i: int) -> Event:
    """Event number ``i`` of a plausible school day, every field exercised."""
    return Event(
        action=(Action.DOCUMENT_VIEW, Action.GRANT_CREATE, Action.LOGIN_FAILED)[i % 3],
        outcome=(Outcome.ALLOWED, Outcome.ALLOWED, Outcome.DENIED)[i % 3],
        actor_id=f"00000000-0000-4000-8000-{i % 5:012d}",
        actor_role=("registrar", "guardian", "compliance")[i % 3],
        actor_email=f"user{i % 5}@school.example",
        student_id=f"10000000-0000-4000-8000-{i % 7:012d}",
        document_id=f"20000000-0000-4000-8000-{i:012d}" if i % 2 else None,
        version_id=f"30000000-0000-4000-8000-{i:012d}" if i % 2 else None,
        grant_id=f"40000000-0000-4000-8000-{i:012d}" if i % 3 == 1 else None,
        purpose="IEP annual review" if i % 4 == 0 else None,
        detail=f'note "{i}" — résumé\nline two' if i % 6 == 0 else None,
        request_id=f"req-{i}",
        client_address=f"203.0.113.{i % 250}",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    )


def make_log(
    engine: Engine, tmp_path: Path, clock: Callable[[], datetime] | None = None
) -> AuditLog:
    """An audit log on ``engine`` with a fresh signing key and a local object store.

    The key file is reused when it exists, so several logs can share one installation.
    """
    key = tmp_path / "audit-signing.pem"
    if key.exists():
        signer = CheckpointSigner.load(key, name=ORIGIN)
    else:
        signer = CheckpointSigner.create(key, name=ORIGIN)
    return AuditLog(
        engine,
        signer,
        LocalObjectStore(tmp_path / "objects"),
        clock or Clock(),
        origin=ORIGIN,
    )


class DBA:
    """Raw SQL on the audit tables, as someone with database access could run it."""

    TABLES = ("audit_events", "audit_checkpoints", "audit_head")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def disable_triggers(self) -> None:
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                for table in self.TABLES:
                    connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
                return
            names = connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            ).scalars()
            for name in list(names):
                if name.startswith("audit_"):
                    connection.execute(text(f"DROP TRIGGER {name}"))

    def run(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), params)

    def row(self, sequence: int) -> dict[str, Any]:
        with self.engine.connect() as connection:
            found = connection.execute(
                text("SELECT * FROM audit_events WHERE sequence = :s"), {"s": sequence}
            ).one()
        return dict(found._mapping)

    def moment(self, row: dict[str, Any]) -> datetime:
        """A row's recorded_at as an aware datetime (SQLite hands back its text)."""
        value = row["recorded_at"]
        if isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def renumber(self, first: int, shift: int) -> None:
        """Add ``shift`` to every sequence number from ``first`` on (via a parking range,
        because the primary key is checked row by row)."""
        self.run(
            "UPDATE audit_events SET sequence = sequence + 1000000 WHERE sequence >= :f", f=first
        )
        self.run(
            "UPDATE audit_events SET sequence = sequence - 1000000 + :s WHERE sequence >= 1000000",
            s=shift,
        )

    def insert(self, values: dict[str, Any]) -> None:
        columns = ", ".join(values)
        placeholders = ", ".join(f":{name}" for name in values)
        sql = f"INSERT INTO audit_events ({columns}) VALUES ({placeholders})"  # noqa: S608 - column names are ours
        self.run(sql, **values)

    def forge(
        self, sequence: int, previous: bytes, moment: datetime, event: Event
    ) -> dict[str, Any]:
        """A well-formed event row: canonical entry, right predecessor, right leaf hash."""
        entry = encode_entry(sequence, moment, previous, event)
        values = {
            name: getattr(event, name)
            for name in (
                "actor_id",
                "actor_role",
                "actor_email",
                "student_id",
                "document_id",
                "version_id",
                "grant_id",
                "purpose",
                "detail",
                "request_id",
                "client_address",
                "user_agent",
            )
        }
        values.update(
            sequence=sequence,
            recorded_at=moment if self.dialect == "postgresql" else _sqlite_time(moment),
            action=event.action.value,
            outcome=event.outcome.value,
            entry=entry,
            leaf_hash=leaf(entry),
        )
        return values


def leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sealed_log(engine: Engine, tmp_path: Path, clock: Clock) -> AuditLog:
    """40 events, sealed by checkpoints at 16, 32 and 40."""
    log = make_log(engine, tmp_path, clock)
    for i in range(1, 41):
        log.record(sample_event(i))
        if i in SEALS:
            log.checkpoint()
    return log


@pytest.fixture
def dba(engine: Engine, sealed_log: AuditLog) -> DBA:
    dba = DBA(engine)
    dba.disable_triggers()
    return dba


def verify_in_parallel(log: AuditLog, workers: int = 2) -> VerifyReport:
    """``log.verify`` in ``workers`` processes, in chunks of four events."""
    with (
        patch.object(audit.verify, "PARALLEL_MIN_EVENTS", 1),
        patch.object(audit.verify, "_CHUNK_HEIGHT_MIN", 2),
    ):
        return log.verify(workers=workers)


def assert_caught(log: AuditLog, problem: Problem, sequence: int, *words: str) -> None:
    report = log.verify()
    # Checking chunks in parallel finds the same, as it hands every doubt to one process.
    assert verify_in_parallel(log) == report
    assert not report.ok
    assert (report.problem, report.first_bad_sequence) == (problem, sequence), report.detail
    for word in words:
        assert word in report.detail


def in_one_process_only() -> Any:
    """Fail the test if the log is scanned in one process (the parallel path gave up)."""
    return patch.object(audit.verify._Scan, "run", side_effect=AssertionError("scanned"))


def test_verifying_in_parallel_beside_other_threads_starts_fresh_interpreters(
    sealed_log: AuditLog,
) -> None:
    # Forking while another thread may hold a lock could hang the child.
    methods: list[str | None] = []
    get_context = multiprocessing.get_context

    def spy(method: str | None = None) -> Any:
        methods.append(method)
        return get_context(method)

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with in_one_process_only(), patch.object(multiprocessing, "get_context", spy):
            report = verify_in_parallel(sealed_log, workers=3)
    finally:
        stop.set()
        other.join()
    assert methods == ["spawn"]
    assert report == sealed_log.verify()
    assert report.ok, report.detail


def test_verification_reports_its_progress(sealed_log: AuditLog) -> None:
    calls: list[tuple[int, int]] = []
    with patch.object(audit.verify, "_PROGRESS_EVERY", 16):
        assert sealed_log.verify(progress=lambda *call: calls.append(call)).ok
    assert calls == [(16, 40), (32, 40)]
    # In parallel, after every chunk of four events, from whichever process checked it.
    calls.clear()
    with (
        in_one_process_only(),
        patch.object(audit.verify, "PARALLEL_MIN_EVENTS", 1),
        patch.object(audit.verify, "_CHUNK_HEIGHT_MIN", 2),
    ):
        assert sealed_log.verify(workers=3, progress=lambda *call: calls.append(call)).ok
    assert calls == [(done, 40) for done in range(4, 41, 4)]


def test_an_intact_log_verifies(sealed_log: AuditLog) -> None:
    report = sealed_log.verify()
    with in_one_process_only():
        assert verify_in_parallel(sealed_log) == report
    assert report.ok, report.detail
    assert report.events_checked == 40
    # Three SQL checkpoints, and the newest object-store copy.
    assert report.checkpoints_checked == 4
    assert report.latest_checkpoint is not None
    assert report.latest_checkpoint.tree_size == 40
    assert report.warnings == ()


EDITS = {
    "actor_email": "someone.else@school.example",
    "student_id": "10000000-0000-4000-8000-999999999999",
    "action": "document.preview",
    "outcome": "error",
    "purpose": "routine",
    "user_agent": None,
}


def test_an_edited_column_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    original = dba.row(9)
    for column, value in EDITS.items():
        # Column names come from EDITS above.
        sql = f"UPDATE audit_events SET {column} = :v WHERE sequence = 9"  # noqa: S608
        dba.run(sql, v=value)
        assert_caught(sealed_log, Problem.EDITED, 9, f"column {column}")
        dba.run(sql, v=original[column])
        assert sealed_log.verify().ok


def test_an_edited_time_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    later = datetime(2025, 9, 1, 9, 0, tzinfo=UTC)
    dba.run(
        "UPDATE audit_events SET recorded_at = :t WHERE sequence = 9",
        t=later if dba.dialect == "postgresql" else _sqlite_time(later),
    )
    assert_caught(sealed_log, Problem.EDITED, 9, "recorded_at")


def test_an_edited_entry_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    entry = dba.row(9)["entry"].replace(b"user4@", b"user1@")
    dba.run("UPDATE audit_events SET entry = :e WHERE sequence = 9", e=entry)
    assert_caught(sealed_log, Problem.EDITED, 9, "event 9")


def test_an_edit_with_its_hashes_recomputed_is_caught_by_the_next_event(
    dba: DBA, sealed_log: AuditLog
) -> None:
    original = dba.row(9)
    forged = dba.forge(
        9,
        dba.row(8)["leaf_hash"],
        datetime(2025, 9, 1, 7, 30, 4, 500000, tzinfo=UTC),
        Event(Action.DOCUMENT_VIEW, Outcome.DENIED, actor_email="x@y.org"),
    )
    assert forged["entry"] != original["entry"]
    dba.run("DELETE FROM audit_events WHERE sequence = 9")
    dba.insert(forged)
    assert_caught(sealed_log, Problem.EDITED, 9, "event 9 was changed")


def test_rewriting_all_later_hashes_is_caught_by_the_checkpoint(
    dba: DBA, sealed_log: AuditLog
) -> None:
    # The thorough forger: edit event 20 and recompute every later entry and hash, so
    # the chain is consistent again. Only the signed checkpoints can tell.
    rows = [dba.row(s) for s in range(20, 41)]
    dba.run("DELETE FROM audit_events WHERE sequence >= 20")
    previous = dba.row(19)["leaf_hash"]
    for row in rows:
        if row["sequence"] == 20:
            event = Event(Action.FOLDER_VIEW, Outcome.ALLOWED, actor_email="nobody@x.org")
        else:
            event = Event(**{f.name: row[f.name] for f in fields(Event)})
        forged = dba.forge(row["sequence"], previous, dba.moment(row), event)
        dba.insert(forged)
        previous = forged["leaf_hash"]
    dba.run("UPDATE audit_head SET last_leaf_hash = :h", h=previous)
    # Events 17..32 are the first range a checkpoint no longer vouches for.
    assert_caught(sealed_log, Problem.EDITED, 17, "checkpoint for tree size 32")


def test_a_deleted_row_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.run("DELETE FROM audit_events WHERE sequence = 9")
    assert_caught(sealed_log, Problem.DELETED, 9, "event 9 is missing")


def test_a_deleted_row_with_the_gap_closed_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.run("DELETE FROM audit_events WHERE sequence BETWEEN 9 AND 10")
    dba.renumber(11, -2)
    assert_caught(sealed_log, Problem.DELETED, 9, "events 9..10 are missing")


def test_an_inserted_well_formed_row_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.renumber(9, +1)
    forged = dba.forge(
        9,
        dba.row(8)["leaf_hash"],
        datetime(2025, 9, 1, 7, 30, 4, 700000, tzinfo=UTC),
        Event(Action.GRANT_REVOKE, Outcome.ALLOWED, actor_email="registrar@school.example"),
    )
    dba.insert(forged)
    assert_caught(sealed_log, Problem.INSERTED, 9, "position 9 is not part of this log")


def test_an_inserted_copy_of_another_row_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.renumber(9, +1)
    copy = dba.row(3)
    copy["sequence"] = 9
    dba.insert(copy)
    assert_caught(sealed_log, Problem.INSERTED, 9, "position 9")


def test_two_swapped_rows_are_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.run("UPDATE audit_events SET sequence = -1 WHERE sequence = 9")
    dba.run("UPDATE audit_events SET sequence = 9 WHERE sequence = 10")
    dba.run("UPDATE audit_events SET sequence = 10 WHERE sequence = -1")
    assert_caught(sealed_log, Problem.REORDERED, 9, "event 9 is stored at position 10")


def test_truncating_the_newest_rows_is_caught_through_the_object_store(
    dba: DBA, sealed_log: AuditLog, tmp_path: Path
) -> None:
    # A careful DBA removes the newest events, their SQL checkpoints and fixes the
    # counter; the signed copy in the object store still says 40.
    dba.run("DELETE FROM audit_events WHERE sequence > 30")
    dba.run("DELETE FROM audit_checkpoints WHERE tree_size > 30")
    dba.run(
        "UPDATE audit_head SET last_sequence = 30, last_leaf_hash = :h", h=dba.row(30)["leaf_hash"]
    )
    assert (tmp_path / "objects" / checkpoint_key(40)).is_file()
    assert_caught(sealed_log, Problem.TRUNCATED, 31, "covers 40 events")


def test_truncating_unsealed_rows_is_caught_by_the_counter(dba: DBA, sealed_log: AuditLog) -> None:
    for i in range(41, 46):
        sealed_log.record(sample_event(i))
    dba.run("DELETE FROM audit_events WHERE sequence > 42")
    assert_caught(sealed_log, Problem.TRUNCATED, 43, "45 sequence numbers")


def test_a_forged_sql_checkpoint_is_caught(dba: DBA, sealed_log: AuditLog, tmp_path: Path) -> None:
    # Someone without the signing key signs a tree head over a rewritten history.
    forger = CheckpointSigner.create(tmp_path / "forger.pem", name=ORIGIN)
    root = hashlib.sha256(b"rewritten").digest()
    moment = datetime.now(UTC)
    note = forger.sign(Checkpoint(ORIGIN, 48, root, moment)).note
    dba.run(
        "INSERT INTO audit_checkpoints (tree_size, root_hash, signed_at, note) "
        "VALUES (48, :r, :t, :n)",
        r=root,
        t=moment if dba.dialect == "postgresql" else _sqlite_time(moment),
        n=note,
    )
    assert_caught(sealed_log, Problem.BAD_SIGNATURE, 48, "does not verify")


def test_an_edited_sql_checkpoint_is_caught(dba: DBA, sealed_log: AuditLog) -> None:
    dba.run(
        "UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = 32",
        r=hashlib.sha256(b"other").digest(),
    )
    assert_caught(sealed_log, Problem.BAD_SIGNATURE, 32, "root hash")


def test_a_replaced_object_store_checkpoint_is_caught(
    dba: DBA, sealed_log: AuditLog, tmp_path: Path
) -> None:
    path = tmp_path / "objects" / checkpoint_key(40)
    signed = path.read_bytes()
    path.write_bytes(signed.replace(b"\n40\n", b"\n41\n"))
    assert_caught(sealed_log, Problem.BAD_SIGNATURE, 40, "object-store checkpoint")


def test_an_edit_after_the_newest_checkpoint_is_caught_by_the_chain(
    dba: DBA, sealed_log: AuditLog
) -> None:
    for i in range(41, 46):
        sealed_log.record(sample_event(i))
    dba.run("UPDATE audit_events SET detail = 'nothing to see' WHERE sequence = 43")
    assert_caught(sealed_log, Problem.EDITED, 43, "column detail")


def test_truncating_unsealed_rows_and_rolling_back_the_counter_is_caught(
    dba: DBA, sealed_log: AuditLog
) -> None:
    for i in range(41, 46):
        sealed_log.record(sample_event(i))
    dba.run("DELETE FROM audit_events WHERE sequence > 42")
    dba.run("UPDATE audit_head SET last_sequence = 42")
    assert_caught(sealed_log, Problem.TRUNCATED, 43, "counter rolled back")


def test_values_of_the_wrong_type_are_caught(dba: DBA, sealed_log: AuditLog) -> None:
    # SQLite stores whatever type is written; PostgreSQL converts. Either way, no crash.
    dba.run("UPDATE audit_events SET actor_email = 42, entry = 'garbage' WHERE sequence = 9")
    assert_caught(sealed_log, Problem.EDITED, 9, "not a valid audit entry")
    dba.run("UPDATE audit_checkpoints SET note = 'forged' WHERE tree_size = 16")
    assert_caught(sealed_log, Problem.EDITED, 9)
    if dba.dialect == "sqlite":  # PostgreSQL refuses text in a bigint column
        dba.run("UPDATE audit_head SET last_sequence = 'many'")
    report = sealed_log.verify()
    assert (report.problem, report.first_bad_sequence) == (Problem.EDITED, 9)


@pytest.mark.parametrize(("workers", "height"), [(2, 2), (3, 6), (2, 8)])
def test_verifying_in_parallel_rebuilds_every_checkpoint(
    engine: Engine, tmp_path: Path, workers: int, height: int
) -> None:
    log = make_log(engine, tmp_path)
    for i in range(1, 301):
        log.record(sample_event(i))
        if i % 37 == 0 or i in (1, 64, 128, 255, 256, 257):
            log.checkpoint()
    for i in range(301, 311):  # unsealed events after the newest checkpoint
        log.record(sample_event(i))
    report = log.verify()
    assert report.ok, report.detail
    with (
        in_one_process_only(),
        patch.object(audit.verify, "PARALLEL_MIN_EVENTS", 1),
        patch.object(audit.verify, "_CHUNK_HEIGHT_MIN", height),
    ):
        assert log.verify(workers=workers) == report
