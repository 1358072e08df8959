"""The audit log: canonical entries, appends that fail closed, triggers, checkpoints,
queries, proofs and exports, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from minio import Minio
from minio.error import S3Error
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from audit.checkpoint import CheckpointSigner, CheckpointVerifier
from audit.errors import AuditIntegrityError, AuditUnavailable
from audit.events import (
    GENESIS_HASH,
    USER_AGENT_LIMIT,
    Action,
    Event,
    Outcome,
    decode_entry,
    encode_entry,
    format_time,
    parse_time,
)
from audit.export import CSV_COLUMNS, ExportFormat, export_events
from audit.log import AuditLog, EventFilter, EventNotFound, checkpoint_key
from audit.merkle import (
    consistency_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from audit.models import AuditBase
from folders.db import make_engine
from folders.models import School
from storage.objects import LocalObjectStore, S3ObjectStore
from tests.audit.test_tamper import DBA, ORIGIN, Clock, make_log, sample_event
from tests.support.db import PostgresServer, statements_sent
from tests.support.s3 import S3Service

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Text the canonical encoding must survive: quotes, backslashes, controls, non-ASCII,
# the JSON-troublesome U+2028, astral characters. (NUL and lone surrogates are refused.)
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=40,
)


def _optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.none() | strategy


_EVENTS = st.builds(
    Event,
    action=st.sampled_from(list(Action)),
    outcome=st.sampled_from(list(Outcome)),
    actor_id=_optional(_TEXT),
    actor_role=_optional(st.text(max_size=32).filter(lambda t: "\x00" not in t)),
    actor_email=_optional(_TEXT),
    student_id=_optional(_TEXT),
    purpose=_optional(_TEXT),
    detail=_optional(_TEXT | st.just('"\\\n\r\t\b\f\x01\x1f\x7f\u2028\U0001f600é')),
    user_agent=_optional(_TEXT),
)


@given(
    event=_EVENTS,
    sequence=st.integers(min_value=1, max_value=2**53),
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    previous=st.binary(min_size=32, max_size=32),
)
@settings(max_examples=300, deadline=None)
def test_an_entry_is_canonical_json_and_decodes_to_its_event(
    event: Event, sequence: int, moment: datetime, previous: bytes
) -> None:
    entry = encode_entry(sequence, moment, previous, event)
    fields = {name: getattr(event, name) for name in Event.__dataclass_fields__}
    expected = {
        **{k: (None if v is None else str(v)) for k, v in fields.items()},
        "seq": sequence,
        "time": format_time(moment),
        "prev": previous.hex(),
        "v": 1,
    }
    assert entry == json.dumps(
        expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    decoded = decode_entry(entry)
    assert decoded.canonical
    assert (decoded.sequence, decoded.recorded_at, decoded.previous_hash, decoded.event) == (
        sequence,
        moment,
        previous,
        event,
    )


def test_a_reformatted_entry_decodes_but_is_not_canonical() -> None:
    entry = encode_entry(3, datetime(2025, 1, 1, tzinfo=UTC), GENESIS_HASH, sample_event(3))
    spaced = json.dumps(json.loads(entry)).encode()
    assert decode_entry(spaced).event == sample_event(3)
    assert not decode_entry(spaced).canonical


@pytest.mark.parametrize(
    "entry",
    [
        b"\xff",
        b"[]",
        b'{"seq": 1}',
        encode_entry(1, datetime(2025, 1, 1, tzinfo=UTC), GENESIS_HASH, sample_event(1)).replace(
            b'"v":1', b'"v":2'
        ),
        encode_entry(1, datetime(2025, 1, 1, tzinfo=UTC), GENESIS_HASH, sample_event(1)).replace(
            b'"action":"grant.create"', b'"action":"grant.steal"'
        ),
    ],
)
def test_decode_refuses_what_is_not_an_entry(entry: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(entry)


def test_times_are_rfc3339_utc_with_six_fraction_digits() -> None:
    whole = datetime(2025, 3, 9, 1, 2, 3, tzinfo=UTC)
    assert format_time(whole) == "2025-03-09T01:02:03.000000Z"
    eastern = datetime(2025, 3, 9, 1, 2, 3, 45, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert format_time(eastern) == "2025-03-09T01:02:03.000045Z"
    assert parse_time("2025-03-09T01:02:03.000045Z") == eastern
    with pytest.raises(ValueError):
        format_time(datetime(2025, 3, 9))
    with pytest.raises(ValueError):
        parse_time("2025-03-09T01:02:03Z")


def test_an_event_refuses_bad_fields_and_cuts_a_hostile_user_agent() -> None:
    with pytest.raises(ValueError):
        Event("document.steal", Outcome.ALLOWED)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Event(Action.LOGIN, Outcome.ALLOWED, student_id="x" * 65)
    with pytest.raises(ValueError):
        Event(Action.LOGIN, Outcome.ALLOWED, detail="a\x00b")
    with pytest.raises(ValueError):
        Event(Action.LOGIN, Outcome.ALLOWED, purpose="\udc80")
    with pytest.raises(TypeError):
        Event(Action.LOGIN, Outcome.ALLOWED, student_id=uuid.uuid4())  # type: ignore[arg-type]
    event = Event("auth.login", "denied", user_agent="\x00" + "A" * 5000)  # type: ignore[arg-type]
    assert (event.action, event.outcome) == (Action.LOGIN, Outcome.DENIED)
    assert event.user_agent == "\N{REPLACEMENT CHARACTER}" + "A" * (USER_AGENT_LIMIT - 1)


# Appending ------------------------------------------------------------------------------


@pytest.fixture
def log(engine: Engine, tmp_path: Path) -> AuditLog:
    return make_log(engine, tmp_path)


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def _school(code: str) -> School:
    return School(code=code, name=f"School {code}", created_at=datetime.now(UTC))


def test_record_assigns_gapless_numbers_and_chains_each_event_to_the_last(
    log: AuditLog, engine: Engine
) -> None:
    recorded = [log.record(sample_event(i)) for i in range(1, 6)]
    assert [r.sequence for r in recorded] == [1, 2, 3, 4, 5]
    assert recorded[0].previous_hash == GENESIS_HASH
    for before, after in pairwise(recorded):
        assert after.previous_hash == before.leaf_hash
        assert after.recorded_at > before.recorded_at
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT sequence, entry, leaf_hash FROM audit_events ORDER BY sequence")
        ).all()
    assert [(r.sequence, r.entry, r.leaf_hash) for r in recorded] == [tuple(s) for s in stored]
    assert all(r.leaf_hash == hashlib.sha256(b"\x00" + r.entry).digest() for r in recorded)
    assert log.get(3) == recorded[2]


def test_append_commits_and_rolls_back_with_the_callers_transaction(
    log: AuditLog, engine: Engine
) -> None:
    with Session(engine) as session, session.begin():
        session.add(_school("A"))
        first = log.append(session, sample_event(1))
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        session.add(_school("B"))
        session.flush()
        log.append(session, sample_event(2))
        raise RuntimeError("the caller's change fails after the event was written")
    assert _count(engine, "schools") == 1
    assert _count(engine, "audit_events") == 1
    # The rolled-back number is handed out again: the sequence stays gapless.
    assert log.record(sample_event(3)).sequence == first.sequence + 1 == 2


def _refuse_event_inserts(engine: Engine) -> None:
    """Make the database refuse audit inserts, as a full disk or lost grant would."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text(
                    "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'no space left'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER test_refuse BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION test_refuse()"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER test_refuse BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'no space left'); END"
                )
            )


def test_a_failed_append_raises_audit_unavailable_and_the_change_does_not_happen(
    log: AuditLog, engine: Engine
) -> None:
    log.record(sample_event(1))
    _refuse_event_inserts(engine)
    with (
        pytest.raises(AuditUnavailable, match="no space left"),
        Session(engine) as session,
        session.begin(),
    ):
        session.add(_school("A"))
        session.flush()
        log.append(session, sample_event(2))
    with pytest.raises(AuditUnavailable):
        log.record(sample_event(2))
    assert _count(engine, "schools") == 0
    assert _count(engine, "audit_events") == 1
    on_table = " ON audit_events" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as connection:
        connection.execute(text(f"DROP TRIGGER test_refuse{on_table}"))
    assert log.record(sample_event(2)).sequence == 2
    assert log.verify().ok


def test_an_unreachable_database_is_audit_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "gone.db"
    engine = make_engine(f"sqlite:///{path}")  # opens, never creates: no file, no log
    log = make_log(engine, tmp_path)
    with pytest.raises(AuditUnavailable):
        log.record(sample_event(1))
    engine.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor_email = 'x@y.org'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE sequence = 1",
        "UPDATE audit_checkpoints SET tree_size = 5",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_head",
    ],
)
def test_the_database_refuses_to_change_history(
    log: AuditLog, engine: Engine, statement: str
) -> None:
    log.record(sample_event(1))
    log.checkpoint()
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    assert log.verify().ok


@pytest.fixture
def postgres_engine(postgres_server: PostgresServer, postgres_template: str) -> Iterator[Engine]:
    """A migrated PostgreSQL database only (for what SQLite has no equivalent of)."""
    name = postgres_server.create_database(template=postgres_template)
    engine = make_engine(postgres_server.url_for(name))
    yield engine
    engine.dispose()
    postgres_server.drop_database(name)


def _statements(engine: Engine, action: Callable[[], object]) -> str:
    """The statements ``action`` sent: "A" for one in autocommit mode, "T" in a transaction."""
    with statements_sent(engine) as sent:
        action()
    return "".join("A" if statement.autocommit else "T" for statement in sent)


def _append_in_transaction(engine: Engine, log: AuditLog, event: Event) -> None:
    with Session(engine) as session, session.begin():
        log.append(session, event)


@pytest.mark.postgres
def test_postgresql_appends_in_one_statement_while_the_guess_holds(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    clock = Clock()
    mine = make_log(postgres_engine, tmp_path, clock)
    other = make_log(postgres_engine, tmp_path, clock)

    def record(log: AuditLog, i: int) -> str:
        return _statements(postgres_engine, lambda: log.record(sample_event(i)))

    def append(log: AuditLog, i: int) -> str:
        event = sample_event(i)
        return _statements(
            postgres_engine, lambda: _append_in_transaction(postgres_engine, log, event)
        )

    # A log's first append knows no head yet: lock and read it, then insert.
    assert record(mine, 1) == "TT"
    # The head is still its own last event: one statement, alone or in a transaction.
    assert record(mine, 2) == "A"
    assert append(mine, 3) == "T"
    # Another log appended meanwhile, so the guess is wrong. In a transaction the
    # statement still took the lock and read the head: one more statement inserts.
    assert append(other, 4) == "TT"
    assert append(mine, 5) == "TT"
    # After a wrong guess a log appends in a transaction until a guess holds again.
    assert record(mine, 6) == "T"
    # Alone, in autocommit mode, a wrong guess changes nothing; the append is then
    # made in a transaction.
    assert record(other, 7) == "ATT"
    assert record(mine, 8) == "ATT"
    assert record(mine, 9) == "T"
    assert record(mine, 10) == "A"
    # A rolled-back append leaves its log a guess of a head that never was.
    with pytest.raises(RuntimeError), Session(postgres_engine) as session, session.begin():
        mine.append(session, sample_event(11))
        raise RuntimeError("the action failed after its event was written")
    assert record(mine, 12) == "ATT"
    assert record(mine, 13) == "T"
    with postgres_engine.connect() as connection:
        rows = connection.execute(
            text("SELECT sequence, request_id, recorded_at FROM audit_events ORDER BY sequence")
        ).all()
    expected = [i for i in range(1, 14) if i != 11]
    # Every entry chains to the one before and no time runs backwards.
    assert [row.sequence for row in rows] == list(range(1, 13))
    assert [row.request_id for row in rows] == [f"req-{i}" for i in expected]
    assert [row.recorded_at for row in rows] == sorted(row.recorded_at for row in rows)
    mine.checkpoint()
    report = mine.verify()
    assert report.ok, report.detail
    assert report.events_checked == 12


@pytest.mark.postgres
@pytest.mark.parametrize("in_transaction", [False, True])
def test_an_append_on_a_connection_that_died_fails_alone_and_the_pool_replaces_it(
    postgres_server: PostgresServer, postgres_template: str, tmp_path: Path, in_transaction: bool
) -> None:
    name = postgres_server.create_database(template=postgres_template)
    # One pooled connection, reused without a ping: the append is the first to see
    # that its server process is gone.
    engine = make_engine(postgres_server.url_for(name), pool_size=1, ping_idle_after=60)
    try:
        log = make_log(engine, tmp_path)
        log.record(sample_event(1))
        log.record(sample_event(2))  # from here on, one statement per append
        with engine.connect() as connection:
            first = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        postgres_server.terminate_backend(first)

        with pytest.raises(AuditUnavailable, match="terminating connection") as failed:
            if in_transaction:
                _append_in_transaction(engine, log, sample_event(3))
            else:
                log.record(sample_event(3))
        cause = failed.value.__cause__
        assert isinstance(cause, DBAPIError) and cause.connection_invalidated

        log.record(sample_event(4))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != first
            requests = connection.execute(
                text("SELECT request_id FROM audit_events ORDER BY sequence")
            ).scalars()
            assert list(requests) == ["req-1", "req-2", "req-4"]
        log.checkpoint()
        assert log.verify().ok
    finally:
        engine.dispose()
        postgres_server.drop_database(name)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor_email = 'x@y.org'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "TRUNCATE audit_checkpoints",
        "TRUNCATE audit_head",
    ],
)
def test_postgresql_triggers_hold_in_replica_mode_and_against_truncate(
    postgres_engine: Engine, tmp_path: Path, statement: str
) -> None:
    log = make_log(postgres_engine, tmp_path)
    log.record(sample_event(1))
    log.checkpoint()
    with pytest.raises(DBAPIError, match="append-only"), postgres_engine.begin() as connection:
        # Replica mode skips ordinary triggers; ENABLE ALWAYS ones still fire.
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(statement))
    assert log.verify().ok


def test_the_migration_matches_the_audit_models(engine: Engine) -> None:
    audit_tables = set(AuditBase.metadata.tables)

    def only_audit(
        obj: object, name: str | None, kind: str, reflected: bool, compare_to: object
    ) -> bool:
        table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in audit_tables

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": only_audit}
        )
        assert compare_metadata(context, AuditBase.metadata) == []


# Checkpoints ----------------------------------------------------------------------------


def _leaves(engine: Engine) -> list[bytes]:
    with engine.connect() as connection:
        entries = connection.execute(text("SELECT entry FROM audit_events ORDER BY sequence"))
        return [leaf_hash(entry) for (entry,) in entries]


def test_a_checkpoint_is_signed_and_written_to_sql_and_the_object_store(
    log: AuditLog, engine: Engine, tmp_path: Path
) -> None:
    for i in range(1, 11):
        log.record(sample_event(i))
    signed = log.checkpoint()
    checkpoint = signed.checkpoint
    assert (checkpoint.origin, checkpoint.tree_size) == (ORIGIN, 10)
    assert checkpoint.root_hash == root(_leaves(engine))
    verifier = CheckpointVerifier.from_public_key_pem(log.public_key_pem(), name=ORIGIN)
    assert verifier.verify(signed.note) == checkpoint
    assert (tmp_path / "objects" / checkpoint_key(10)).read_bytes() == signed.note
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT tree_size, root_hash, note FROM audit_checkpoints")
        ).one()
    assert tuple(row) == (10, checkpoint.root_hash, signed.note)
    # Nothing new: the same checkpoint, no new row.
    assert log.checkpoint() == signed
    assert log.latest_checkpoint() == signed
    assert _count(engine, "audit_checkpoints") == 1


def test_checkpoints_made_by_several_processes_extend_one_tree(
    engine: Engine, tmp_path: Path
) -> None:
    clock = Clock()
    first, second = make_log(engine, tmp_path, clock), make_log(engine, tmp_path, clock)
    assert first.checkpoint().checkpoint.tree_size == 0  # an empty log can be sealed too
    heads = []
    for round_number, (writer, sealer) in enumerate([(first, second), (second, first)] * 3):
        for i in range(7 + round_number):
            writer.record(sample_event(i))
        heads.append(sealer.checkpoint().checkpoint)
    leaves = _leaves(engine)
    for older, newer in pairwise(heads):
        assert newer.root_hash == root(leaves[: newer.tree_size])
        proof = consistency_proof(leaves[: newer.tree_size], older.tree_size)
        verify_consistency(
            older.tree_size, newer.tree_size, older.root_hash, newer.root_hash, proof
        )
    assert _count(engine, "audit_checkpoints") == 7


def test_no_checkpoint_is_signed_over_rewritten_history(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    for i in range(1, 11):
        log.record(sample_event(i))
    log.checkpoint()
    dba = DBA(engine)
    dba.disable_triggers()
    forged = dba.forge(
        10, dba.row(9)["leaf_hash"], datetime(2025, 9, 1, 8, tzinfo=UTC), sample_event(99)
    )
    dba.run("DELETE FROM audit_events WHERE sequence = 10")
    dba.insert(forged)
    dba.run("UPDATE audit_head SET last_leaf_hash = :h", h=forged["leaf_hash"])
    restarted = make_log(engine, tmp_path)
    restarted.record(sample_event(11))
    with pytest.raises(AuditIntegrityError, match="no longer match checkpoint 10"):
        restarted.checkpoint()
    # An event tampered with after sealing is refused by a process that already knew it.
    with pytest.raises(AuditIntegrityError, match="does not chain"):
        log.checkpoint()
    assert _count(engine, "audit_checkpoints") == 1


def test_maybe_checkpoint_seals_in_batches_and_after_a_quiet_interval(
    engine: Engine, tmp_path: Path
) -> None:
    clock = Clock(step=timedelta(seconds=1))
    log = AuditLog(
        engine,
        CheckpointSigner.create(tmp_path / "key.pem", name=ORIGIN),
        LocalObjectStore(tmp_path / "objects"),
        clock,
        origin=ORIGIN,
        checkpoint_every=4,
        checkpoint_interval=timedelta(minutes=5),
    )

    def sealed() -> int:
        latest = log.latest_checkpoint()
        return -1 if latest is None else latest.checkpoint.tree_size

    log.maybe_checkpoint()
    assert sealed() == -1  # nothing to seal
    log.record(sample_event(1))
    log.maybe_checkpoint()
    assert sealed() == 1  # the first event is sealed at once
    for i in range(2, 5):
        log.record(sample_event(i))
        log.maybe_checkpoint()
    assert sealed() == 1  # three pending, a minute old
    log.record(sample_event(5))
    log.maybe_checkpoint()
    assert sealed() == 5  # four pending: a batch
    log.record(sample_event(6))
    log.maybe_checkpoint()
    assert sealed() == 5
    clock.now += timedelta(minutes=5)
    log.maybe_checkpoint()
    assert sealed() == 6  # one pending, but for five minutes


def test_maybe_checkpoint_asks_the_database_every_sixteenth_of_a_batch_or_each_second(
    engine: Engine, tmp_path: Path
) -> None:
    clock = Clock(step=timedelta(0))
    log = AuditLog(
        engine,
        CheckpointSigner.create(tmp_path / "key.pem", name=ORIGIN),
        LocalObjectStore(tmp_path / "objects"),
        clock,
        origin=ORIGIN,
        checkpoint_every=64,  # asks after every 4 events
    )
    log.record(sample_event(1))
    assert _statements(engine, log.maybe_checkpoint) != ""  # the first call asks
    asked = []
    for i in range(2, 10):
        log.record(sample_event(i))
        asked.append(_statements(engine, log.maybe_checkpoint) != "")
    assert asked == [False, False, False, True] * 2
    assert _statements(engine, log.maybe_checkpoint) == ""
    clock.now += timedelta(seconds=1)
    assert _statements(engine, log.maybe_checkpoint) != ""  # a second later, it asks again
    assert _statements(engine, log.maybe_checkpoint) == ""
    clock.now += timedelta(minutes=5)
    log.maybe_checkpoint()
    latest = log.latest_checkpoint()
    assert latest is not None and latest.checkpoint.tree_size == 9


def test_no_checkpoint_is_recorded_without_its_object_store_copy(
    log: AuditLog, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "objects" / "audit"
    blocker.write_bytes(b"a file where the checkpoint directory belongs")
    log.record(sample_event(1))
    with caplog.at_level(logging.WARNING, logger="audit.log"):
        log.maybe_checkpoint()  # never raises: it runs after the recorded action
    assert "could not be written to the object store" in caplog.text
    with pytest.raises(AuditUnavailable):
        log.checkpoint()
    assert _count(engine, "audit_checkpoints") == 0
    with pytest.raises(AuditUnavailable):
        log.verify()  # cannot read the object store: no verdict rather than a wrong one
    blocker.unlink()
    signed = log.checkpoint()
    copy = tmp_path / "objects" / checkpoint_key(1)
    assert copy.read_bytes() == signed.note
    assert _count(engine, "audit_checkpoints") == 1

    copy.unlink()  # lost (a bucket without Object Lock)
    report = log.verify()
    assert report.ok and report.warnings == (
        "1 SQL checkpoint(s) have no object-store copy (first: tree size 1)",
    )
    assert log.checkpoint() == signed  # nothing new to seal, but the copy is restored
    assert copy.read_bytes() == signed.note
    assert log.verify().warnings == ()


def test_retention_on_a_store_without_object_lock_is_refused(
    engine: Engine, tmp_path: Path
) -> None:
    log = AuditLog(
        engine,
        CheckpointSigner.create(tmp_path / "key.pem", name=ORIGIN),
        LocalObjectStore(tmp_path / "objects"),
        Clock(),
        origin=ORIGIN,
        retention_days=30,
    )
    log.record(sample_event(1))
    with pytest.raises(AuditUnavailable, match="cannot retain"):
        log.checkpoint()
    assert not (tmp_path / "objects" / checkpoint_key(1)).exists()


# Reading --------------------------------------------------------------------------------


def test_query_filters_pages_and_counts_newest_first(log: AuditLog) -> None:
    recorded = [log.record(sample_event(i)) for i in range(1, 31)]
    page = log.query(actor_email="user2@school.example", per_page=4)
    expected = [r for r in reversed(recorded) if r.event.actor_email == "user2@school.example"]
    assert page.total == len(expected) == 6
    assert list(page.items) == expected[:4]
    assert (page.pages, page.has_next, page.has_previous) == (2, True, False)
    second = log.query(actor_email="user2@school.example", per_page=4, page=2)
    assert list(second.items) == expected[4:] and not second.has_next
    student = "10000000-0000-4000-8000-000000000003"
    denied = log.query(student_id=student, outcome=Outcome.DENIED)
    assert [r.sequence for r in denied.items] == [
        r.sequence
        for r in reversed(recorded)
        if r.event.student_id == student and r.event.outcome is Outcome.DENIED
    ]
    views = log.query(action=Action.DOCUMENT_VIEW, document_id=recorded[2].event.document_id)
    assert views.items == (recorded[2],)
    window = log.query(since=recorded[9].recorded_at, until=recorded[12].recorded_at)
    assert [r.sequence for r in window.items] == [12, 11, 10]
    assert log.query(actor_email="nobody@school.example").items == ()
    with pytest.raises(ValueError):
        log.query(page=0)
    with pytest.raises(ValueError):
        log.query(per_page=501)


def test_query_pages_through_one_snapshot_while_events_are_appended(log: AuditLog) -> None:
    assert log.query().up_to_seq == 0  # an empty log: nothing to bound yet
    recorded = [log.record(sample_event(i)) for i in range(1, 11)]
    first = log.query(per_page=4)
    assert first.up_to_seq == 10 and first.total == 10
    log.record(sample_event(11))  # others keep appending between page views
    second = log.query(per_page=4, page=2, up_to_seq=first.up_to_seq)
    log.record(sample_event(12))
    third = log.query(per_page=4, page=3, up_to_seq=second.up_to_seq)
    for page in (second, third):
        assert (page.total, page.pages, page.up_to_seq) == (10, 3, 10)
    seen = [r.sequence for page in (first, second, third) for r in page.items]
    assert seen == [r.sequence for r in reversed(recorded)]  # each once, none newer
    # Filters combine with the bound; a bound past the head is lowered to it.
    assert log.query(student_id=recorded[2].event.student_id, up_to_seq=3).total == 1
    assert log.query(up_to_seq=10**12).up_to_seq == 12
    assert log.query(up_to_seq=10**12).total == 12
    assert [r.sequence for r in log.events(EventFilter(up_to_seq=4))] == [1, 2, 3, 4]
    for bad in (0, -1):
        with pytest.raises(ValueError):
            log.query(up_to_seq=bad)
        with pytest.raises(ValueError):
            EventFilter(up_to_seq=bad)


def test_a_query_shows_the_signed_entry_not_an_edited_column(log: AuditLog, engine: Engine) -> None:
    log.record(sample_event(1))
    dba = DBA(engine)
    dba.disable_triggers()
    dba.run("UPDATE audit_events SET purpose = 'edited later'")
    (shown,) = log.query().items
    assert shown.event == sample_event(1)


def test_get_names_a_missing_event(log: AuditLog) -> None:
    log.record(sample_event(1))
    with pytest.raises(EventNotFound):
        log.get(2)


def test_prove_gives_inclusion_proofs_that_verify_against_the_signed_checkpoint(
    log: AuditLog,
) -> None:
    recorded = [log.record(sample_event(i)) for i in range(1, 38)]
    verifier = CheckpointVerifier.from_public_key_pem(log.public_key_pem(), name=ORIGIN)
    for sequence in (1, 2, 17, 32, 37):
        proof = log.prove(sequence)
        checkpoint = verifier.verify(proof.checkpoint.note)
        assert checkpoint.tree_size == 37
        assert proof.event == recorded[sequence - 1]
        verify_inclusion(
            hashlib.sha256(b"\x00" + proof.event.entry).digest(),
            proof.leaf_index,
            checkpoint.tree_size,
            proof.hashes,
            checkpoint.root_hash,
        )
    with pytest.raises(EventNotFound):
        log.prove(38)


def test_prove_refuses_when_the_log_no_longer_matches_its_checkpoint(
    log: AuditLog, engine: Engine
) -> None:
    for i in range(1, 6):
        log.record(sample_event(i))
    log.checkpoint()
    dba = DBA(engine)
    dba.disable_triggers()
    dba.run("UPDATE audit_events SET leaf_hash = :h WHERE sequence = 2", h=bytes(32))
    with pytest.raises(AuditIntegrityError, match="no longer match"):
        log.prove(4)


def test_events_stream_oldest_first_and_export_as_jsonl_and_csv(log: AuditLog) -> None:
    recorded = [log.record(sample_event(i)) for i in range(1, 13)]
    log.record(
        Event(
            Action.LOGIN_FAILED, Outcome.DENIED, actor_email="x@y.org", user_agent="=HYPERLINK(1)"
        )
    )
    where = EventFilter(student_id="10000000-0000-4000-8000-000000000002")
    chosen = [r for r in recorded if r.event.student_id == where.student_id]
    assert list(log.events(where)) == chosen

    out = io.BytesIO()
    assert export_events(log.events(where), out, ExportFormat.JSONL) == len(chosen)
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b"" and lines[:-1] == [r.entry for r in chosen]

    out = io.BytesIO()
    assert export_events(log.events(), out, ExportFormat.CSV) == 13
    rows = list(csv.reader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 14
    assert rows[6][CSV_COLUMNS.index("detail")] == sample_event(6).detail
    assert rows[1][CSV_COLUMNS.index("leaf_hash")] == recorded[0].leaf_hash.hex()
    # A formula in a client-chosen field is defused for spreadsheets.
    assert rows[13][CSV_COLUMNS.index("user_agent")] == "'=HYPERLINK(1)"
    assert rows[13][CSV_COLUMNS.index("purpose")] == ""


# Object Lock on a real S3 server ------------------------------------------------------


@pytest.fixture(scope="module")
def locked_bucket(s3_client: S3Client) -> str:
    """A bucket with Object Lock. It is left behind: its retained objects cannot be
    deleted, which is the point (the server's data directory is temporary)."""
    bucket = f"satchel-lock-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


@pytest.mark.s3
def test_checkpoints_are_written_under_compliance_retention(
    engine: Engine,
    tmp_path: Path,
    s3_server: S3Service,
    s3_client: S3Client,
    locked_bucket: str,
    s3_prefix: str,
    minio_client: Minio,
) -> None:
    store = S3ObjectStore(s3_client, locked_bucket, s3_prefix, endpoint=s3_server.endpoint_url)
    log = AuditLog(
        engine,
        CheckpointSigner.create(tmp_path / "key.pem", name=ORIGIN),
        store,
        lambda: datetime.now(UTC),
        origin=ORIGIN,
        retention_days=2,
    )
    log.record(sample_event(1))
    signed = log.checkpoint()
    key = s3_prefix + checkpoint_key(1)
    # An independent client reads what the bucket really holds.
    retention = minio_client.get_object_retention(locked_bucket, key)
    assert retention.mode == "COMPLIANCE"
    expected = signed.checkpoint.timestamp + timedelta(days=2)
    assert abs(retention.retain_until_date - expected) < timedelta(seconds=2)
    with minio_client.get_object(locked_bucket, key) as response:
        assert response.read() == signed.note
    version = minio_client.stat_object(locked_bucket, key).version_id
    with pytest.raises(S3Error):
        minio_client.remove_object(locked_bucket, key, version_id=version)
    report = log.verify()
    assert report.ok and report.latest_checkpoint == signed.checkpoint


@pytest.mark.s3
def test_retention_asked_of_a_bucket_without_object_lock_is_refused(
    engine: Engine, tmp_path: Path, s3_store: S3ObjectStore
) -> None:
    log = AuditLog(
        engine,
        CheckpointSigner.create(tmp_path / "key.pem", name=ORIGIN),
        s3_store,
        Clock(),
        origin=ORIGIN,
        retention_days=2,
    )
    log.record(sample_event(1))
    with pytest.raises(AuditUnavailable, match="no Object Lock"):
        log.checkpoint()
    assert list(s3_store.list("audit/")) == []
