"""Audit log benchmark: appends per second and verification speed, SQLite and PostgreSQL.

Appends go through ``AuditLog.record`` (one transaction per event, as a request makes)
with 1 and 4 concurrent writers, each with a log of its own (as server processes have),
and with 4 threads sharing one log (as the threads of one process do, which commit
together); the baseline is a plain INSERT of the same row into a
table with the same columns, no trigger, lock or hashing, sent on its own in autocommit
mode (the cheapest durable insert), measured in the same run, the two interleaved round
by round in alternating order. Verification runs over a log of 600,000 events
(``SATCHEL_BENCH_SCALE=small``, the default) or 1,000,000 (``full``), sealed by a
checkpoint, in one process and in as many as there are CPUs (``satchel audit verify``'s
default), alternating. The figures go to the shared results table (``results``).
Goals: 2,000 appends/s with one PostgreSQL writer and 200,000 verified events/s.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy import Engine, insert, update

from audit.checkpoint import CheckpointSigner
from audit.events import GENESIS_HASH, PAYLOAD_FIELDS, entry_from_values, event_values, format_time
from audit.log import AuditLog
from audit.merkle import leaf_hash
from audit.models import HEAD
from folders.db import make_engine
from storage.objects import LocalObjectStore
from tests.audit.test_tamper import sample_event
from tests.benchmarks.conftest import Results, median, plain_events_table, scale
from tests.support.db import PostgresServer

pytestmark = pytest.mark.postgres

SCALES = {
    "smoke": {"appends": 100, "rounds": 2, "verify": 20_000, "verify_runs": 1},
    "small": {"appends": 500, "rounds": 3, "verify": 540_000, "verify_runs": 2},
    "full": {"appends": 5_000, "rounds": 5, "verify": 1_000_000, "verify_runs": 3},
}
GOAL_APPENDS_PER_S = 2_000  # one PostgreSQL writer
GOAL_VERIFY_PER_S = 200_000
ORIGIN = "bench.example/audit"
SHORT_NAMES = {"sqlite": "sqlite", "postgresql": "pg"}


@pytest.fixture
def engines(
    tmp_path: Path,
    sqlite_template: Path,
    postgres_server: PostgresServer,
    postgres_template: str,
) -> Iterator[dict[str, Engine]]:
    """A fresh migrated database of each kind, pooled for four writers."""
    sqlite_path = tmp_path / "bench.db"
    shutil.copyfile(sqlite_template, sqlite_path)
    name = postgres_server.create_database(template=postgres_template)
    engines = {
        "sqlite": make_engine(f"sqlite:///{sqlite_path}", pool_size=8),
        "postgresql": make_engine(postgres_server.url_for(name), pool_size=8),
    }
    yield engines
    for engine in engines.values():
        engine.dispose()
    postgres_server.drop_database(name)


def _log(engine: Engine, directory: Path) -> AuditLog:
    key = directory / "signing.pem"
    signer = (
        CheckpointSigner.load(key, name=ORIGIN)
        if key.exists()
        else CheckpointSigner.create(key, name=ORIGIN)
    )
    return AuditLog(
        engine,
        signer,
        LocalObjectStore(directory / "objects"),
        lambda: datetime.now(UTC),
        origin=ORIGIN,
    )


def _concurrently(writers: int, total: int, work: Callable[[int, int], None]) -> float:
    """Run ``work(writer, i)`` ``total`` times split over ``writers`` threads; return /s."""
    barrier = threading.Barrier(writers + 1)
    failures: list[BaseException] = []

    def run(writer: int) -> None:
        barrier.wait()
        try:
            for i in range(writer, total, writers):
                work(writer, i)
        except BaseException as e:  # reported by the caller
            failures.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert failures == []
    return total / elapsed


def _bench_appends(
    engine: Engine, directory: Path, writers: int, appends: int, rounds: int, *, shared: bool
) -> tuple[list[float], list[float]]:
    """Audit appends/s and plain INSERTs/s of each round, interleaved.

    Each writer has an ``AuditLog`` of its own, as each server process has, or with
    ``shared`` they all use one, as the threads of one process do (group commit).
    """
    # The baseline: the same columns, indexes and bytes, inserted with nothing else.
    name = f"bench_plain_{writers}_{'shared' if shared else 'own'}"
    plain = plain_events_table(name)
    plain.create(engine)
    sample = _log(engine, directory).record(sample_event(1))
    row: dict[str, Any] = dict(zip(PAYLOAD_FIELDS, event_values(sample.event), strict=True))
    row.update(recorded_at=sample.recorded_at, entry=sample.entry, leaf_hash=sample.leaf_hash)
    one = _log(engine, directory)
    logs = [one if shared else _log(engine, directory) for _ in range(writers)]
    events = [sample_event(i) for i in range(16)]

    def audit_append(writer: int, i: int) -> None:
        logs[writer].record(events[i % 16])

    audit_rates: list[float] = []
    plain_rates: list[float] = []
    for round_ in range(rounds):

        def plain_insert(writer: int, i: int, offset: int = round_ * appends) -> None:
            # One statement is a transaction of its own: no BEGIN round trip.
            with engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                autocommit.execute(insert(plain), {**row, "sequence": offset + i})

        order = ("plain", "audit") if round_ % 2 == 0 else ("audit", "plain")
        for side in order:
            if side == "plain":
                plain_rates.append(_concurrently(writers, appends, plain_insert))
            else:
                audit_rates.append(_concurrently(writers, appends, audit_append))
    plain.drop(engine)
    return audit_rates, plain_rates


def _log_rows(events: int) -> Iterator[tuple[Any, ...]]:
    """The rows of a valid log of ``events`` events, in :data:`_FILL_COLUMNS` order, with
    the time as the entry's text."""
    start = datetime(2025, 1, 6, 8, tzinfo=UTC)
    templates = [event_values(sample_event(i)) for i in range(64)]
    previous = GENESIS_HASH
    for sequence in range(1, events + 1):
        values = templates[sequence % 64]
        time_text = format_time(start + timedelta(microseconds=sequence * 1_337))
        entry = entry_from_values(sequence, time_text, previous.hex(), values)
        previous = leaf_hash(entry)
        yield (sequence, time_text, *values, entry, previous)


_FILL_COLUMNS = ", ".join(("sequence", "recorded_at", *PAYLOAD_FIELDS, "entry", "leaf_hash"))


def _fill(engine: Engine, events: int) -> None:
    """Write a valid log of ``events`` events directly, through the driver (appending
    them one by one, or through SQLAlchemy's executemany, would take longer than the
    benchmark): ``COPY`` on PostgreSQL, batches of plain INSERTs on SQLite."""
    last = GENESIS_HASH
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            with (
                driver.cursor() as cursor,
                # The queued writer sends from a thread of its own, so computing the
                # chain here overlaps with the server storing it.
                cursor.copy(
                    f"COPY audit_events ({_FILL_COLUMNS}) FROM STDIN",
                    writer=QueuedLibpqWriter(cursor),
                ) as copy,
            ):
                for row in _log_rows(events):
                    copy.write_row(row)
                    last = row[-1]
        else:
            placeholders = ", ".join("?" * len(_FILL_COLUMNS.split(", ")))
            statement = (
                f"INSERT INTO audit_events ({_FILL_COLUMNS}) "  # noqa: S608 - constant names
                f"VALUES ({placeholders})"
            )
            batch: list[tuple[Any, ...]] = []
            for row in _log_rows(events):
                # SQLAlchemy keeps SQLite times as 'YYYY-MM-DD HH:MM:SS.ffffff'.
                batch.append((row[0], row[1][:-1].replace("T", " "), *row[2:]))
                last = row[-1]
                if len(batch) == 10_000:
                    connection.exec_driver_sql(statement, batch)
                    batch.clear()
            if batch:
                connection.exec_driver_sql(statement, batch)
        connection.execute(update(HEAD).values(last_sequence=events, last_leaf_hash=last))
    if engine.dialect.name == "postgresql":
        # The statistics autovacuum gathers within a minute of a bulk load; without them
        # the planner guesses the table's size and sorts instead of reading in order.
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE audit_events")


def _bench_verify(
    engine: Engine, directory: Path, events: int, runs: int
) -> dict[int, list[float]]:
    """Verified events/s, by number of processes, of ``runs`` verifications each of a
    log of ``events``: in one process and in the suggested number, alternating."""
    _fill(engine, events)
    log = _log(engine, directory)
    log.checkpoint()
    workers = os.cpu_count() or 1  # satchel audit verify's default
    rates: dict[int, list[float]] = {1: [], workers: []}
    for round_ in range(runs):
        order = (1, workers) if round_ % 2 == 0 else (workers, 1)
        for processes in dict.fromkeys(order):
            started = time.perf_counter()
            report = log.verify(workers=processes)
            elapsed = time.perf_counter() - started
            assert report.ok, report.detail
            assert report.events_checked == events
            rates[processes].append(events / elapsed)
    return rates


@pytest.mark.slow
def test_audit_benchmark(engines: dict[str, Engine], tmp_path: Path, results: Results) -> None:
    sizes = SCALES[scale()]
    verify_medians = {}
    for database, engine in engines.items():
        short = SHORT_NAMES[database]
        directory = tmp_path / database
        directory.mkdir()
        by_workers = _bench_verify(engine, directory, sizes["verify"], sizes["verify_runs"])
        workers = max(by_workers)
        rates = by_workers[workers]
        verify_medians[database] = median(rates)
        results.add(
            f"audit_verify_events_per_s_{short}",
            median(rates),
            "events/s",
            samples=rates,
            note=f"{sizes['verify']:,} events, {database}, {workers} process(es)",
        )
        results.add(
            f"audit_verify_one_process_events_per_s_{short}",
            median(by_workers[1]),
            "events/s",
            samples=by_workers[1],
            note="the same in one process (satchel audit verify --jobs 1)",
        )
        # Appends then extend that log, as they would in a school's long-lived one.
        for writers, shared in ((1, False), (4, False), (4, True)):
            audit, plain = _bench_appends(
                engine, directory, writers, sizes["appends"], sizes["rounds"], shared=shared
            )
            ratios = [a / p for a, p in zip(audit, plain, strict=True)]
            what = f"{database}, {writers} writer{'s' if writers > 1 else ''}"
            key = f"{short}_{writers}"
            if shared:
                what = f"{database}, {writers} threads sharing one log (group commit)"
                key += "_shared"
            goal = f"; goal ≥ {GOAL_APPENDS_PER_S:,}" if key == "pg_1" else ""
            results.add(
                f"audit_appends_per_s_{key}",
                median(audit),
                "appends/s",
                samples=audit,
                note=f"AuditLog.record, {what}, {sizes['appends']} per round{goal}",
            )
            results.add(
                f"audit_plain_inserts_per_s_{key}",
                median(plain),
                "inserts/s",
                samples=plain,
                note=f"plain INSERT of the same row, {what}",
            )
            results.add(
                f"audit_append_ratio_{key}",
                median(ratios),
                "x plain",
                samples=ratios,
                note=what,
            )
    slowest = min(verify_medians, key=lambda d: verify_medians[d])
    results.add(
        "audit_verify_events_per_s",
        verify_medians[slowest],
        "events/s",
        note=f"the slower database ({slowest}); goal ≥ {GOAL_VERIFY_PER_S:,}",
    )
