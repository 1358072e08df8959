"""Concurrent appends keep sequence numbers gapless and the chain intact.

Each writer has its own :class:`AuditLog` (as each gunicorn worker has) and seals the
log now and then, so checkpoints race with appends and with each other too.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from audit.errors import AuditUnavailable
from audit.events import Action, Event, Outcome
from audit.log import AuditLog
from folders.db import make_engine
from tests.audit.test_tamper import make_log
from tests.support.db import PostgresServer, statements_sent

WRITERS = 8
APPENDS = 500
PROCESSES = 2  # each costs a fresh interpreter, so few and short
PROCESS_APPENDS = 60


def _event(writer: int, number: int) -> Event:
    return Event(
        Action.DOCUMENT_VIEW,
        Outcome.ALLOWED,
        actor_email=f"writer{writer}@school.example",
        detail=str(number),
    )


def _assert_gapless_and_in_each_writers_order(engine: Engine, writers: int, appends: int) -> None:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT sequence, actor_email, detail FROM audit_events ORDER BY sequence")
        ).all()
    assert [row.sequence for row in rows] == list(range(1, writers * appends + 1))
    for writer in range(writers):
        mine = [
            int(row.detail) for row in rows if row.actor_email == f"writer{writer}@school.example"
        ]
        assert mine == list(range(appends))


@pytest.fixture
def postgres_engine(postgres_server: PostgresServer, postgres_template: str) -> Iterator[Engine]:
    name = postgres_server.create_database(template=postgres_template)
    engine = make_engine(postgres_server.url_for(name))
    yield engine
    engine.dispose()
    postgres_server.drop_database(name)


def _run_writers(write: Callable[[int], None]) -> None:
    """Run ``write(writer)`` on ``WRITERS`` threads released at once; fail with the first
    exception any of them raised."""
    start = threading.Barrier(WRITERS)
    failures: list[BaseException] = []

    def run(writer: int) -> None:
        try:
            start.wait()
            write(writer)
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


@pytest.mark.postgres
def test_eight_writers_on_postgresql_leave_a_gapless_chain_that_verifies(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    make_log(postgres_engine, tmp_path)  # creates the shared signing key once
    engine = make_engine(postgres_engine.url, pool_size=WRITERS + 2)
    logs = [make_log(engine, tmp_path) for _ in range(WRITERS)]

    def write(writer: int) -> None:
        for number in range(APPENDS):
            logs[writer].record(_event(writer, number))
            if number % 50 == 49:
                logs[writer].checkpoint()

    _run_writers(write)
    _assert_gapless_and_in_each_writers_order(engine, WRITERS, APPENDS)
    final = make_log(engine, tmp_path)
    final.checkpoint()
    report = final.verify()
    assert report.ok, report.detail
    assert report.events_checked == WRITERS * APPENDS
    # Every writer sealed 10 times; racing seals of one size keep a single row.
    assert 10 <= report.checkpoints_checked - 1 <= WRITERS * 10 + 1
    engine.dispose()


def _append_in_a_process(url: str, directory: str, writer: int, appends: int) -> None:
    engine = make_engine(url)
    log = make_log(engine, Path(directory), lambda: datetime.now(UTC))
    for number in range(appends):
        log.record(_event(writer, number))
    log.maybe_checkpoint()
    engine.dispose()


def test_writers_in_separate_processes_share_one_sequence(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    make_log(engine, tmp_path)  # the signing key, before the processes race to create it
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_append_in_a_process,
            args=(database_url, str(tmp_path), writer, PROCESS_APPENDS),
        )
        for writer in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    _assert_gapless_and_in_each_writers_order(engine, PROCESSES, PROCESS_APPENDS)
    report = make_log(engine, tmp_path).verify()
    assert report.ok, report.detail


def test_verify_runs_correctly_while_events_are_appended(engine: Engine, tmp_path: Path) -> None:
    writer_log, checker = make_log(engine, tmp_path), make_log(engine, tmp_path)
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for number in range(200):
                writer_log.record(_event(0, number))
                if number % 50 == 49:
                    writer_log.checkpoint()
        except BaseException as e:  # reported by the main thread
            failures.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    reports = []
    while not done.is_set():
        reports.append(checker.verify())
    thread.join()
    assert failures == []
    assert len(reports) >= 2
    for report in reports:
        assert report.ok, report.detail
        assert report.warnings == ()
    assert checker.verify().events_checked == 200


# --- group commit: threads sharing one log --------------------------------------------------


def test_threads_sharing_one_log_keep_a_gapless_chain_in_each_threads_order(
    engine: Engine, tmp_path: Path
) -> None:
    log = make_log(engine, tmp_path)
    recorded: dict[int, list[int]] = {}

    def write(writer: int) -> None:
        mine = []
        for number in range(100):
            event = _event(writer, number)
            entry = log.record(event)
            assert entry.event == event  # each caller gets its own event back
            mine.append(entry.sequence)
        recorded[writer] = mine

    _run_writers(write)
    _assert_gapless_and_in_each_writers_order(engine, WRITERS, 100)
    assert sorted(s for mine in recorded.values() for s in mine) == list(
        range(1, WRITERS * 100 + 1)
    )
    log.checkpoint()
    report = make_log(engine, tmp_path).verify()
    assert report.ok, report.detail


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        )


@contextmanager
def _head_locked(engine: Engine) -> Iterator[None]:
    """Hold the sequence lock from another connection, as a slow writer would."""
    with engine.connect() as connection, connection.begin():
        connection.execute(text("SELECT * FROM audit_head FOR UPDATE"))
        yield


def _record_in_threads(
    log: AuditLog, events: list[Event]
) -> tuple[list[threading.Thread], list[Any]]:
    """Start one thread per event, each recording it; the list fills with the outcomes."""
    outcomes: list[Any] = [None] * len(events)

    def record(i: int) -> None:
        try:
            outcomes[i] = log.record(events[i])
        except AuditUnavailable as e:
            outcomes[i] = e

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(events))]
    for thread in threads:
        thread.start()
    return threads, outcomes


@pytest.mark.postgres
def test_events_recorded_while_a_commit_is_in_flight_are_committed_together(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    log = make_log(postgres_engine, tmp_path)
    log.record(_event(0, 0))  # from here on, its guess of the head holds
    other = make_engine(postgres_engine.url)  # the blocker's and observer's statements
    with statements_sent(postgres_engine) as statements:
        with _head_locked(other):
            first, first_outcome = _record_in_threads(log, [_event(1, 0)])
            _wait_for(lambda: _lock_waiters(other) == 1, "the first writer to block")
            rest, outcomes = _record_in_threads(log, [_event(2, n) for n in range(5)])
            # The five queue behind the commit in flight (none reaches the database).
            _wait_for(lambda: len(log._queue) == 5, "five events to queue")
            assert len(statements) == 1
        for thread in first + rest:
            thread.join()
    other.dispose()
    # One statement for the first event, one for the five that waited.
    assert len(statements) == 2
    assert [o.sequence for o in first_outcome + outcomes] == [2, 3, 4, 5, 6, 7]
    assert [o.event for o in outcomes] == [_event(2, n) for n in range(5)]
    log.checkpoint()
    report = log.verify()
    assert report.ok, report.detail
    assert report.events_checked == 7


@pytest.mark.postgres
def test_an_event_the_database_refuses_fails_alone_and_its_batch_is_committed(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    with postgres_engine.begin() as connection:
        # A stand-in for any constraint a row can break: refuse one detail.
        connection.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.detail = 'refused' THEN RAISE check_violation USING MESSAGE = 'refused'; "
                "END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )
    log = make_log(postgres_engine, tmp_path)
    log.record(_event(0, 0))
    events = [_event(1, n) for n in range(4)]
    events[2] = Event(Action.DOCUMENT_VIEW, Outcome.ALLOWED, detail="refused")
    other = make_engine(postgres_engine.url)
    with _head_locked(other):
        first, _ = _record_in_threads(log, [_event(0, 1)])
        _wait_for(lambda: _lock_waiters(other) == 1, "the first writer to block")
        rest, outcomes = _record_in_threads(log, events)
        _wait_for(lambda: len(log._queue) == 4, "four events to queue")
    for thread in first + rest:
        thread.join()
    other.dispose()
    assert isinstance(outcomes[2], AuditUnavailable)
    assert "refused" in str(outcomes[2])
    kept = [o for i, o in enumerate(outcomes) if i != 2]
    assert [o.event for o in kept] == [events[0], events[1], events[3]]
    assert [o.sequence for o in kept] == [3, 4, 5]
    log.checkpoint()
    report = log.verify()
    assert report.ok, report.detail
    assert report.events_checked == 5
