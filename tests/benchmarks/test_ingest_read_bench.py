"""Ingest and read through the whole pipeline, against raw boto3 on the same SeaweedFS.

Ingest: ``satchel ingest``'s path (:class:`folders.bulk.BulkIngest`: manifest, spool,
ingest key, inspection, encryption, intent rows, SQL rows and the audit event in one
transaction, on PostgreSQL) against ``put_object`` of the same files read from the same
disk, both with :data:`WORKERS` threads. Read: :meth:`Documents.open` for a guardian
(policy on grants and guardianship, audit event committed, key unwrapped, whole object
authenticated, plaintext streamed) against ``get_object`` of the raw copies, both with
:data:`READERS` threads. Each round runs both sides, in an order that alternates; every
round stores the documents again under new titles (new ingest keys) and new raw keys.

A third side, the floor, is raw boto3 plus only part of what the design requires, each
part done the cheapest way (:class:`Floor`): what any vault under these rules would at
least add, on this machine. Its ratios to raw bound what Satchel's can reach here.

The documents are generated, 100 KB to 5 MB each, about 64 MB per round at small scale
and 1 GB at full scale: typed records (PDF, text and a photo), scanned records (PDF,
one greyscale image per page), multi-page TIFF scans and single-page PNG scans.
"""

from __future__ import annotations

import csv
import io
import itertools
import queue
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from sqlalchemy import insert
from sqlalchemy.dialects import postgresql

from audit.events import PAYLOAD_FIELDS, event_values
from folders.actor import Actor
from folders.bulk import BulkIngest, RowOutcome, parse_manifest
from folders.documents import _DOCUMENT_FOR_GUARDIAN
from folders.models import GrantScope, Role
from folders.runtime import Runtime
from storage.inspect import inspect
from tests.benchmarks.conftest import CPU, Results, cpu_now, median, plain_events_table, scale
from tests.benchmarks.district import add_account, generate_document
from tests.support.postgres import libpq_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.s3, pytest.mark.postgres]

WORKERS = 4  # satchel ingest's default --workers
READERS = 4
STUDENTS = 8
# Bytes per round, rounds.
SCALES = {"smoke": (6_000_000, 2), "small": (64_000_000, 5), "full": (1_050_000_000, 5)}


@dataclass(frozen=True)
class Corpus:
    directory: Path
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def megabytes(self) -> float:
        return sum(self.sizes) / 1e6


def write_corpus(directory: Path, total_bytes: int, seed: int = 2025) -> Corpus:
    """Generate documents into ``directory`` until they hold ``total_bytes``."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    names: list[str] = []
    sizes: list[int] = []
    while sum(sizes) < total_bytes:
        name, data = generate_document(rng, len(names))
        assert 100_000 <= len(data) <= 5_000_000, (name, len(data))
        (directory / name).write_bytes(data)
        names.append(name)
        sizes.append(len(data))
    return Corpus(directory, tuple(names), tuple(sizes))


def write_manifest(corpus: Corpus, tag: str, district_ids: list[str]) -> Path:
    """A manifest storing the corpus once more: new titles make new ingest keys."""
    path = corpus.directory / f"manifest-{tag}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student_id", "category", "title", "school_year", "document_date", "path"])
        for i, name in enumerate(corpus.names):
            writer.writerow(
                [
                    district_ids[i % len(district_ids)],
                    "assessment" if name.startswith("record") else "correspondence",
                    f"Digitized folder page set {i} ({tag})",
                    "2024-2025",
                    "2025-03-14",
                    name,
                ]
            )
    return path


def add_cpu_figures(results: Results, operation: str, satchel: list[CPU], raw: list[CPU]) -> None:
    """``{operation}_cpu_ms_per_doc`` and its raw counterpart, each split by process in
    its note, and ``{operation}_cpu_ratio``: raw ÷ Satchel CPU per document, round by
    round, which is what the speed ratio comes to when the cores are the limit."""

    def split(samples: list[CPU]) -> str:
        parts = [
            ("client", median([c.client for c in samples])),
            ("S3 server", median([c.s3 for c in samples])),
            ("PostgreSQL", median([c.database for c in samples])),
        ]
        return ", ".join(f"{name} {value:.2f}" for name, value in parts)

    totals = [c.total for c in satchel]
    raw_totals = [c.total for c in raw]
    ratios = [r / s for s, r in zip(totals, raw_totals, strict=True)]
    results.add_median(
        f"{operation}_cpu_ms_per_doc",
        totals,
        "ms",
        f"CPU per document, all processes: {split(satchel)}",
    )
    results.add_median(
        f"{operation}_raw_cpu_ms_per_doc", raw_totals, "ms", f"the same for boto3: {split(raw)}"
    )
    results.add_median(f"{operation}_cpu_ratio", ratios, "x raw", "raw ÷ Satchel CPU per document")


class Floor:
    """Raw boto3 plus the least a vault under Satchel's rules must add, done the cheapest
    way: the SQL on plain psycopg connections (as many as threads, kept across rounds, each
    statement in autocommit mode and prepared by the driver after its fifth use), no ORM,
    no encryption, no hashing.

    An ingest adds content inspection and one durable row (an audit event's, into a
    plain table with ``audit_events``' columns and indexes), leaving out the encryption,
    the SHA-256, the document and version rows and the journal. A read adds Satchel's own
    policy statement (the document, its versions, the guardian's link and grants) and
    the same durable row, leaving out the unwrapping, decryption and authentication.
    """

    def __init__(self, site: Runtime, connections: int) -> None:
        assert site.settings.database_url is not None
        table = plain_events_table("bench_floor_events")
        table.create(site.engine)
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        self._policy = str(_DOCUMENT_FOR_GUARDIAN.compile(dialect=dialect))
        self._insert = str(insert(table).compile(dialect=dialect))
        sample = site.audit_log.get(1)
        self._row: dict[str, object] = dict(
            zip(PAYLOAD_FIELDS, event_values(sample.event), strict=True)
        )
        self._row.update(
            recorded_at=sample.recorded_at, entry=sample.entry, leaf_hash=sample.leaf_hash
        )
        self._sequence = itertools.count(1)
        self._pool: queue.SimpleQueue[psycopg.Connection[tuple[object, ...]]] = queue.SimpleQueue()
        for _ in range(connections):
            self._pool.put(psycopg.connect(libpq_url(site.settings.database_url), autocommit=True))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        connection = self._pool.get()
        try:
            yield connection
        finally:
            self._pool.put(connection)

    def inspect_and_record(self, data: bytes, filename: str) -> None:
        """Inspect ``data`` as Satchel does, then write the durable row."""
        inspect(io.BytesIO(data), filename)
        self.record()

    def decide_and_record(self, guardian_id: object, document_id: object) -> None:
        """Read what the policy decides on, then write the durable row."""
        with self._connection() as connection:
            rows = connection.execute(
                self._policy, {"guardian_id": guardian_id, "document_id": document_id}
            ).fetchall()
            assert rows, "the floor's policy read found no document"
        self.record()

    def record(self) -> None:
        with self._connection() as connection:
            connection.execute(self._insert, {**self._row, "sequence": next(self._sequence)})

    def close(self) -> None:
        """Close the connections (the table goes with the test's database)."""
        while not self._pool.empty():
            self._pool.get().close()


def _parallel(workers: int, work: Callable[[int], object], count: int) -> float:
    """Run ``work(i)`` for i in 0..count-1 on ``workers`` threads; return the seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(count)):
            pass
    return time.perf_counter() - started


@pytest.mark.slow
def test_ingest_and_read_vs_raw_s3(
    site: Runtime,
    raw_s3_client: S3Client,
    s3_bucket: str,
    s3_prefix: str,
    tmp_path: Path,
    results: Results,
    request: pytest.FixtureRequest,
) -> None:
    total, rounds = SCALES[scale()]
    corpus = write_corpus(tmp_path / "corpus", total)
    registrar = add_account(site, "registrar@bench.example", Role.REGISTRAR)
    guardian = add_account(site, "guardian@bench.example", Role.GUARDIAN)
    district_ids = []
    for i in range(STUDENTS):
        student = site.students.add_student(registrar, f"B-{i}", "Avery", f"Quinn {i}")
        site.students.link_guardian(registrar, student.id, guardian.email)
        site.grants.grant(registrar, guardian.email, student.id, GrantScope.FOLDER)
        district_ids.append(student.district_id)
    bulk = BulkIngest(site.engine, site.audit_log, site.vault, site.students, site.clock)

    def satchel_ingest(tag: str) -> tuple[float, list[object]]:
        manifest = write_manifest(corpus, tag, district_ids)
        parsed = parse_manifest(manifest.read_bytes(), corpus.directory)
        started = time.perf_counter()
        summary = bulk.run(registrar, parsed, workers=WORKERS)
        seconds = time.perf_counter() - started
        assert summary.count(RowOutcome.STORED) == len(corpus.names), summary.not_stored[:3]
        return seconds, [r.document_id for r in summary.results]

    def satchel_read(reader: Actor, document_ids: list[object]) -> float:
        def one(i: int) -> None:
            opened = site.documents.open(reader, document_ids[i])  # type: ignore[arg-type]
            for _ in opened.chunks:
                pass

        return _parallel(READERS, one, len(document_ids))

    floor = Floor(site, max(WORKERS, READERS))
    request.addfinalizer(floor.close)
    assert guardian.user_id is not None

    def raw_put(tag: str, *, with_floor: bool = False) -> tuple[float, list[str]]:
        """Store the corpus with boto3; ``with_floor`` adds the floor's work to each."""
        side = "floor" if with_floor else "raw"
        keys = [f"{s3_prefix}{side}/{tag}/{i}" for i in range(len(corpus.names))]

        def one(i: int) -> None:
            data = (corpus.directory / corpus.names[i]).read_bytes()
            if with_floor:
                floor.inspect_and_record(data, corpus.names[i])
            raw_s3_client.put_object(Bucket=s3_bucket, Key=keys[i], Body=data)

        return _parallel(WORKERS, one, len(keys)), keys

    def raw_get(keys: list[str], floor_for: list[object] | None = None) -> float:
        """Read ``keys`` with boto3; with ``floor_for`` (Satchel's document ids), the
        floor's work for the guardian and that document comes before each read."""

        def one(i: int) -> None:
            if floor_for is not None:
                floor.decide_and_record(guardian.user_id, floor_for[i])
            body = raw_s3_client.get_object(Bucket=s3_bucket, Key=keys[i])["Body"]
            while body.read(64 * 1024):
                pass
            body.close()

        return _parallel(READERS, one, len(keys))

    def drop_raw(keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            raw_s3_client.delete_objects(
                Bucket=s3_bucket,
                Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]},
            )

    # Warm-up: connections, imports, caches on both sides.
    _, ids = satchel_ingest("warm-up")
    satchel_read(guardian, ids)
    _, keys = raw_put("warm-up")
    raw_get(keys)
    drop_raw(keys)
    _, keys = raw_put("warm-up", with_floor=True)
    raw_get(keys, floor_for=ids)
    drop_raw(keys)

    mb, docs = corpus.megabytes, len(corpus.names)
    ingest, put, read, get, floor_ingest, floor_read = [], [], [], [], [], []
    # CPU per document of each side, read around (not inside) the timed work.
    cpu: dict[str, list[CPU]] = {"ingest": [], "put": [], "read": [], "get": []}
    for round_ in range(rounds):
        # The baseline and Satchel alternate first and last, the floor between them.
        order = ("raw", "floor", "satchel") if round_ % 2 == 0 else ("satchel", "floor", "raw")
        for side in order:
            if side == "floor":
                seconds, keys = raw_put(f"f{round_}", with_floor=True)
                floor_ingest.append(mb / seconds)
                floor_read.append(mb / raw_get(keys, floor_for=ids))
                drop_raw(keys)
            elif side == "raw":
                before = cpu_now()
                seconds, keys = raw_put(f"r{round_}")
                between = cpu_now()
                put.append(mb / seconds)
                get.append(mb / raw_get(keys))
                cpu["put"].append((between - before).per(docs))
                cpu["get"].append((cpu_now() - between).per(docs))
                drop_raw(keys)
            else:
                before = cpu_now()
                seconds, ids = satchel_ingest(f"r{round_}")
                between = cpu_now()
                ingest.append(mb / seconds)
                read.append(mb / satchel_read(guardian, ids))
                cpu["ingest"].append((between - before).per(docs))
                cpu["read"].append((cpu_now() - between).per(docs))

    ingest_ratios = [s / r for s, r in zip(ingest, put, strict=True)]
    read_ratios = [s / r for s, r in zip(read, get, strict=True)]
    kinds = sorted({n.split("-")[0] + n[n.rindex(".") :] for n in corpus.names})
    note = f"{len(corpus.names)} docs ({', '.join(kinds)}), {mb:.0f} MB per round, {rounds} rounds"
    results.add_median(
        "ingest_mb_per_s", ingest, "MB/s", f"bulk ingest, {WORKERS} workers, PostgreSQL; {note}"
    )
    results.add_median("ingest_raw_mb_per_s", put, "MB/s", f"boto3 put_object, {WORKERS} threads")
    results.add_median("ingest_ratio", ingest_ratios, "x raw", "goal ≥ 0.85")
    results.add_median(
        "read_mb_per_s", read, "MB/s", f"Documents.open as a guardian, {READERS} threads"
    )
    results.add_median("read_raw_mb_per_s", get, "MB/s", f"boto3 get_object, {READERS} threads")
    results.add_median("read_ratio", read_ratios, "x raw", "goal ≥ 0.85")
    for operation, floor_rates, satchel_rates, raw_rates, added in (
        ("ingest", floor_ingest, ingest, put, "inspection and one durable row"),
        ("read", floor_read, read, get, "the policy read and one durable row"),
    ):
        floor_ratios = [f / r for f, r in zip(floor_rates, raw_rates, strict=True)]
        results.add_median(
            f"{operation}_floor_ratio",
            floor_ratios,
            "x raw",
            f"raw boto3 plus only {added}, done the cheapest way: an upper bound here "
            "for any vault under these rules",
        )
        of_floor = [s / f for s, f in zip(satchel_rates, floor_rates, strict=True)]
        results.add_median(
            f"{operation}_ratio_to_floor",
            of_floor,
            "x floor",
            f"Satchel ÷ the floor, per round ({median(floor_rates):.1f} MB/s)",
        )
    for satchel, raw in (("ingest", "put"), ("read", "get")):
        add_cpu_figures(results, satchel, cpu[satchel], cpu[raw])
    assert all(r > 0 for r in ingest_ratios + read_ratios)
