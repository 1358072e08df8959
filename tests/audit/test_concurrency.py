"""Concurrent appends keep sequence numbers gapless and the chain intact.

Each writer has its own :class:`AuditLog` (as each gunicorn worker has) and seals the
log now and then, so checkpoints race with appends and with each other too.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from audit.events import Action, Event, Outcome
from folders.db import make_engine
from tests.audit.test_tamper import make_log
from tests.support.db import PostgresServer

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


@pytest.mark.postgres
def test_eight_writers_on_postgresql_leave_a_gapless_chain_that_verifies(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    make_log(postgres_engine, tmp_path)  # creates the shared signing key once
    engine = make_engine(postgres_engine.url, pool_size=WRITERS + 2)
    start = threading.Barrier(WRITERS)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            log = make_log(engine, tmp_path)
            start.wait()
            for number in range(APPENDS):
                log.record(_event(writer, number))
                if number % 50 == 49:
                    log.checkpoint()
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
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
