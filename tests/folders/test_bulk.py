"""Bulk ingest: the manifest parser (with a fuzz test), idempotent runs, rejected rows,
recovery from an interrupted run, and the ``satchel ingest`` command."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from minio import Minio
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from audit.events import Action
from config import Settings, StorageBackend
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.bulk import (
    MANIFEST_COLUMNS,
    REPORT_COLUMNS,
    BulkIngest,
    IngestBusy,
    IngestIntents,
    IngestLock,
    Manifest,
    ManifestError,
    ManifestRow,
    RowOutcome,
    RowProblem,
    RowResult,
    ingest_key,
    parse_manifest,
    write_report,
)
from folders.categories import Category
from folders.db import make_engine
from folders.errors import Forbidden
from folders.models import Document, DocumentVersion
from folders.runtime import Runtime
from storage.envelope import ObjectIdentity
from storage.ingest import Vault
from storage.objects import ForwardingStore, ObjectInfo, ObjectStore, S3ObjectStore
from tests.support import samples
from tests.support.db import PostgresServer
from tests.support.people import Cast
from tests.support.postgres import libpq_url
from tests.support.s3 import S3Service
from web.cli import cli

if TYPE_CHECKING:
    from _typeshed import StrPath

BASE = Path("/srv/scans")  # the parser never touches the file system
HEADER = ",".join(MANIFEST_COLUMNS)

# --- the parser --------------------------------------------------------------------------


def parse(text: str, base: Path = BASE) -> tuple[list[ManifestRow], list[RowResult]]:
    manifest = parse_manifest(text.encode("utf-8"), base)
    return list(manifest.rows), list(manifest.rejected)


def test_parses_rows_in_any_column_order_with_bom_crlf_and_blank_lines() -> None:
    text = (
        "\ufeffPath, Category ,student_id,title,school_year,document_date\r\n"
        "scans/a.pdf,Report_Card,S-1,  Report   card ,2024-2025,2025-06-13\r\n"
        "\r\n"
        ",,,,,\r\n"
        'scans/b.tif,health,S-2,"Shots, grade 1",,\r\n'
    )
    rows, rejected = parse(text)
    assert rejected == []
    first, second = rows
    assert (first.line, second.line) == (2, 5)
    assert (first.student_id, first.category, first.title) == (
        "S-1",
        Category.REPORT_CARD,
        "Report card",
    )
    assert (first.school_year, str(first.document_date)) == ("2024-2025", "2025-06-13")
    assert (first.path, first.base_dir) == (PurePosixPath("scans/a.pdf"), BASE)
    assert (second.title, second.school_year, second.document_date) == (
        "Shots, grade 1",
        None,
        None,
    )
    # The cells as written, in the canonical column order, for the report.
    assert first.cells == (
        "S-1",
        "Report_Card",
        "  Report   card ",
        "2024-2025",
        "2025-06-13",
        "scans/a.pdf",
    )


@pytest.mark.parametrize(
    ("row", "reason", "message"),
    [
        (
            "S-1,report_card,Card,2024-2025,2025-06-13",
            "malformed_row",
            "The row has 5 cells; the header has 6.",
        ),
        (
            "S-1,report_card,Card,2024-2025,2025-06-13,a.pdf,extra",
            "malformed_row",
            "The row has 7 cells; the header has 6.",
        ),
        (" ,report_card,Card,,,a.pdf", "bad_student_id", "The student id is required."),
        ("S-1,gossip,Card,,,a.pdf", "bad_category", "Unknown category 'gossip'"),
        ("S-1,report_card,   ,,,a.pdf", "bad_title", "The title is required."),
        (f"S-1,report_card,{'x' * 201},,,a.pdf", "bad_title", "longer than 200 characters"),
        ("S-1,report_card,Card,2024-2026,,a.pdf", "bad_school_year", "2025-2026"),
        ("S-1,report_card,Card,,13/06/2025,a.pdf", "bad_document_date", "look like 2025-09-01"),
        ("S-1,report_card,Card,,2025-02-30,a.pdf", "bad_document_date", "not a real date"),
        ("S-1,report_card,Card,,,", "bad_path", "The path is required."),
        ("S-1,report_card,Card,,,/etc/passwd", "bad_path", "relative to the manifest"),
        ("S-1,report_card,Card,,,scans/../../etc/x.pdf", "bad_path", "may not contain '..'"),
        ("S-1,report_card,Card,,,scans\\a.pdf", "bad_path", "backslash"),
        ('S-1,report_card,Card,,,"a\x01.pdf"', "bad_path", "control characters"),
    ],
)
def test_each_malformed_row_gets_a_precise_reason(row: str, reason: str, message: str) -> None:
    rows, rejected = parse(f"{HEADER}\nS-9,other,Good,,,ok.pdf\n{row}\n")
    assert [r.student_id for r in rows] == ["S-9"]
    [bad] = rejected
    assert (bad.line, bad.outcome, bad.reason) == (3, RowOutcome.REJECTED, reason)
    assert bad.detail is not None and message in bad.detail
    assert bad.reason in {p.value for p in RowProblem}


def test_line_numbers_count_physical_lines() -> None:
    text = f'{HEADER}\nS-1,other,"two\nlines",,,a.pdf\nS-1,gossip,Card,,,a.pdf\n'
    rows, rejected = parse(text)
    assert rows[0].title == "two lines" and rows[0].line == 2
    assert rejected[0].line == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (HEADER.encode() + b"\nS-1,other,Caf\xe9,,,a.pdf\n", "not UTF-8"),
        (b"student_id,category,title,school_year,path\n", "missing document_date"),
        (HEADER.encode() + b",notes\n", "unknown 'notes'"),
        (HEADER.encode() + b",title\n", "repeated 'title'"),
        (HEADER.encode() + b"\nS-1,other," + b"x" * 200_000 + b",,,a.pdf\n", "not valid CSV"),
    ],
)
def test_an_unusable_manifest_is_refused_as_a_whole(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data, BASE)


@given(st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: HEADER.encode() + b))
def test_fuzzed_bytes_raise_only_manifest_errors(data: bytes) -> None:
    try:
        manifest = parse_manifest(data, BASE)
    except ManifestError as e:
        assert e.public_message
        return
    assert manifest.total >= len(manifest.rows)


_CELL = st.text(st.characters(exclude_categories=["Cs"]), max_size=24) | st.sampled_from(
    [
        "S-1",
        "report_card",
        "IEP",
        "2024-2025",
        "2025-01-31",
        "2025-13-01",
        "a.pdf",
        "../a.pdf",
        "/a.pdf",
        "scans/a b.pdf",
        " ",
        "=cmd()",
    ]
)


@given(st.lists(st.lists(_CELL, max_size=8), max_size=8))
def test_fuzzed_rows_are_each_either_valid_or_rejected_with_a_reason(
    records: list[list[str]],
) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(records)
    manifest = parse_manifest(out.getvalue().encode("utf-8"), BASE)
    expected = [r for r in records if any(cell.strip() for cell in r)]
    assert manifest.total == len(expected)
    for rejected in manifest.rejected:
        assert rejected.outcome is RowOutcome.REJECTED
        assert rejected.reason in {p.value for p in RowProblem} and rejected.detail
    for row in manifest.rows:
        assert 0 < len(row.title) <= 200 and row.student_id
        assert not row.path.is_absolute() and ".." not in row.path.parts


def test_ingest_key_covers_every_field_and_the_file() -> None:
    [row], _ = parse(f"{HEADER}\nS-1,iep,Plan,2024-2025,2025-01-31,a.pdf\n")
    digest = hashlib.sha256(b"file").hexdigest()
    key = ingest_key(row, digest)
    assert key == ingest_key(row, digest) and len(key) == 64
    variants = [
        "S-2,iep,Plan,2024-2025,2025-01-31,a.pdf",
        "S-1,health,Plan,2024-2025,2025-01-31,a.pdf",
        "S-1,iep,Plan 2,2024-2025,2025-01-31,a.pdf",
        "S-1,iep,Plan,2023-2024,2025-01-31,a.pdf",
        "S-1,iep,Plan,2024-2025,2025-02-01,a.pdf",
        "S-1,iep,Plan,2024-2025,,a.pdf",
    ]
    keys = {key, ingest_key(row, hashlib.sha256(b"other file").hexdigest())}
    for variant in variants:
        [other], _ = parse(f"{HEADER}\n{variant}\n")
        keys.add(ingest_key(other, digest))
    assert len(keys) == len(variants) + 2
    # Where the file lives is not part of its identity.
    [moved], _ = parse(f"{HEADER}\nS-1,iep,Plan,2024-2025,2025-01-31,elsewhere/b.pdf\n")
    assert ingest_key(moved, digest) == key


# --- the service -------------------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def runtime(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    """Each service test runs with objects in the local store and on SeaweedFS."""
    chosen = settings if request.param == "local" else request.getfixturevalue("s3_settings")
    runtime = Runtime(chosen)
    initialize(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def stored_keys(request: pytest.FixtureRequest, runtime: Runtime) -> Callable[[str], set[str]]:
    """The object keys under a prefix, as an independent reader sees them (the minio
    client for S3, the directory itself for the local store)."""
    settings = runtime.settings
    if settings.storage_backend is StorageBackend.S3:
        client: Minio = request.getfixturevalue("minio_client")
        bucket = str(settings.s3_bucket)

        def on_s3(prefix: str) -> set[str]:
            found = client.list_objects(bucket, prefix=settings.s3_prefix + prefix, recursive=True)
            return {str(o.object_name)[len(settings.s3_prefix) :] for o in found}

        return on_s3

    def on_disk(prefix: str) -> set[str]:
        root = settings.objects_dir
        keys = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        return {k for k in keys if k.startswith(prefix) and not k.split("/")[-1].startswith(".")}

    return on_disk


def make_bulk(runtime: Runtime, lock_wait_seconds: float = 10.0) -> BulkIngest:
    return BulkIngest(
        runtime.engine,
        runtime.audit_log,
        runtime.vault,
        runtime.students,
        runtime.clock,
        lock_wait_seconds=lock_wait_seconds,
    )


def write_files(directory: Path, count: int) -> dict[str, bytes]:
    """``count`` distinct scans (PDFs and TIFFs) under ``directory/scans``."""
    (directory / "scans").mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        if i % 3 == 2:
            name, data = f"scans/page-{i}.tif", samples.make_tiff(pages=1, width=8 + i)
        else:
            name, data = f"scans/doc-{i}.pdf", samples.make_pdf(pages=1, text=f"record {i}")
        (directory / name).write_bytes(data)
        files[name] = data
    return files


def write_manifest(directory: Path, rows: list[list[str]], name: str = "manifest.csv") -> Path:
    path = directory / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return path


def load(path: Path) -> tuple[ManifestRow, ...]:
    return load_all(path).rows


def load_all(path: Path) -> Manifest:
    manifest = parse_manifest(path.read_bytes(), path.parent)
    assert manifest.rejected == ()
    return manifest


def counts(runtime: Runtime) -> tuple[int, int, int]:
    """Documents, versions, and documents carrying an ingest key."""
    with Session(runtime.engine) as session:
        documents = session.scalar(select(func.count()).select_from(Document)) or 0
        versions = session.scalar(select(func.count()).select_from(DocumentVersion)) or 0
        keyed = (
            session.scalar(
                select(func.count()).select_from(Document).where(Document.ingest_key.is_not(None))
            )
            or 0
        )
    return documents, versions, keyed


def version_keys(runtime: Runtime) -> set[str]:
    with Session(runtime.engine) as session:
        return set(session.scalars(select(DocumentVersion.object_key)))


def intent_keys(runtime: Runtime) -> set[str]:
    """The object keys of the ingest intents left in the database."""
    return {key for key, _ in IngestIntents(runtime.engine).all()}


def uploads_audited(runtime: Runtime) -> int:
    return runtime.audit_log.query(action=Action.DOCUMENT_UPLOAD, per_page=1).total


def test_a_run_stores_every_row_once_and_a_rerun_stores_nothing(
    runtime: Runtime, cast: Cast, tmp_path: Path, stored_keys: Callable[[str], set[str]]
) -> None:
    files = write_files(tmp_path / "batch", 12)
    students = [cast.child.district_id, cast.other_child.district_id]
    rows = [
        [students[i % 2], "report_card", f"Report card {i}", "2024-2025", "2025-06-13", name]
        for i, name in enumerate(files)
    ]
    manifest = parse_manifest(
        write_manifest(tmp_path / "batch", rows).read_bytes(), tmp_path / "batch"
    )
    seen: list[RowResult] = []
    summary = make_bulk(runtime).run(cast.registrar, manifest, workers=4, on_result=seen.append)
    assert summary.complete and summary.count(RowOutcome.STORED) == 12
    assert sorted(r.line for r in seen) == list(range(2, 14))
    assert summary.bytes_stored == sum(len(d) for d in files.values())
    assert summary.stopped_by is None and summary.unfinished_removed == 0
    assert counts(runtime) == (12, 12, 12)
    assert uploads_audited(runtime) == 12
    assert stored_keys("versions/") == version_keys(runtime)
    assert intent_keys(runtime) == set()

    folder = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert sorted(d.title for d in folder) == sorted(f"Report card {i}" for i in range(0, 12, 2))
    first = next(d for d in folder if d.title == "Report card 0")
    opened = runtime.documents.open(cast.registrar, first.id, purpose="ingest check")
    assert b"".join(opened.chunks) == next(iter(files.values()))

    again = make_bulk(runtime).run(cast.registrar, manifest, workers=3)
    assert again.complete and again.count(RowOutcome.ALREADY_STORED) == 12
    assert again.bytes_stored == 0
    assert {r.document_id for r in again.results} == {r.document_id for r in summary.results}
    assert counts(runtime) == (12, 12, 12)
    assert uploads_audited(runtime) == 12
    assert stored_keys("versions/") == version_keys(runtime)


def test_rejected_rows_store_nothing_and_are_reported(
    runtime: Runtime, cast: Cast, tmp_path: Path, stored_keys: Callable[[str], set[str]]
) -> None:
    batch = tmp_path / "batch"
    files = write_files(batch, 1)
    (batch / "scans" / "trap.pdf").write_bytes(samples.pdf_with_launch_action())
    (batch / "scans" / "photo.pdf").write_bytes(samples.make_png())  # a PNG named .pdf
    (batch / "scans" / "folder.pdf").mkdir()
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(samples.make_pdf())
    (batch / "scans" / "link.pdf").symlink_to(outside)
    child = cast.child.district_id
    rows = [
        [child, "report_card", "Good", "", "", next(iter(files))],
        [child, "behavior", "Booby-trapped", "", "", "scans/trap.pdf"],
        [child, "health", "Mislabelled", "", "", "scans/photo.pdf"],
        ["S-404", "other", "Nobody's", "", "", next(iter(files))],
        [child, "other", "Missing", "", "", "scans/missing.pdf"],
        [child, "other", "A directory", "", "", "scans/folder.pdf"],
        [child, "other", "Escaping link", "", "", "scans/link.pdf"],
        [child, "gossip", '=HYPERLINK("x")', "", "", "scans/trap.pdf"],
    ]
    manifest = parse_manifest(write_manifest(batch, rows).read_bytes(), batch)
    summary = make_bulk(runtime).run(cast.registrar, manifest)
    assert not summary.complete
    reasons = {r.line: r.reason for r in summary.not_stored}
    assert reasons == {
        3: "pdf_launch",
        4: "extension_mismatch",
        5: "unknown_student",
        6: "file_unreadable",
        7: "file_unreadable",
        8: "bad_path",
        9: "bad_category",
    }
    assert summary.count(RowOutcome.STORED) == 1 and summary.count(RowOutcome.FAILED) == 0
    assert counts(runtime) == (1, 1, 1)
    assert stored_keys("versions/") == version_keys(runtime)
    assert intent_keys(runtime) == set()

    report = tmp_path / "report.csv"
    write_report(report, summary.not_stored)
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    with report.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert tuple(lines[0]) == REPORT_COLUMNS
    assert [int(line["line"]) for line in lines] == [3, 4, 5, 6, 7, 8, 9]
    assert lines[0]["title"] == "Booby-trapped" and "Launch" in lines[0]["detail"]
    assert lines[2]["detail"] == "No student has the district id S-404."
    assert lines[-1]["title"] == '\'=HYPERLINK("x")'  # never a formula in a spreadsheet


def test_a_repeated_row_is_stored_once(runtime: Runtime, cast: Cast, tmp_path: Path) -> None:
    files = write_files(tmp_path / "batch", 1)
    row = [cast.child.district_id, "iep", "IEP 2025", "2024-2025", "", next(iter(files))]
    path = write_manifest(tmp_path / "batch", [row] * 6)
    summary = make_bulk(runtime).run(
        cast.registrar, parse_manifest(path.read_bytes(), path.parent), workers=6
    )
    assert summary.complete
    assert (summary.count(RowOutcome.STORED), summary.count(RowOutcome.ALREADY_STORED)) == (1, 5)
    assert len({r.document_id for r in summary.results}) == 1
    assert counts(runtime) == (1, 1, 1)


def test_an_interrupted_run_leaves_nothing_behind_after_the_next_run(
    runtime: Runtime, cast: Cast, tmp_path: Path, stored_keys: Callable[[str], set[str]]
) -> None:
    files = write_files(tmp_path / "batch", 3)
    rows = [
        [cast.child.district_id, "assessment", f"Test {i}", "", "", name]
        for i, name in enumerate(files)
    ]
    path = write_manifest(tmp_path / "batch", rows)
    first_row, *rest = load(path)
    bulk = make_bulk(runtime)
    stored = bulk.ingest_one(cast.registrar, first_row)
    assert stored.outcome is RowOutcome.STORED
    [committed_key] = version_keys(runtime)
    # What `kill -9` leaves: an encrypted object put under its intent but never
    # committed, an intent whose object was never put, and a committed row whose intent
    # was not removed yet.
    orphan_key, never_put = f"versions/{uuid.uuid4()}", f"versions/{uuid.uuid4()}"
    for key in (orphan_key, never_put, committed_key):
        IngestIntents(runtime.engine).add(key, runtime.clock())
    runtime.vault.store_file(
        io.BytesIO(files[rest[0].path.as_posix()]),
        "x.pdf",
        ObjectIdentity(str(uuid.uuid4()), str(uuid.uuid4())),
        orphan_key,
    )
    assert stored_keys("versions/") == {committed_key, orphan_key}

    summary = bulk.run(cast.registrar, parse_manifest(path.read_bytes(), path.parent))
    assert summary.unfinished_removed == 2 and summary.complete
    assert (summary.count(RowOutcome.STORED), summary.count(RowOutcome.ALREADY_STORED)) == (2, 1)
    assert intent_keys(runtime) == set()
    assert stored_keys("versions/") == version_keys(runtime)
    assert committed_key in version_keys(runtime) and len(version_keys(runtime)) == 3


def test_a_row_whose_key_version_is_retired_while_it_is_stored_fails_and_the_run_goes_on(
    runtime: Runtime,
    cast: Cast,
    tmp_path: Path,
    stored_keys: Callable[[str], set[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = write_files(tmp_path / "batch", 2)
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    path = write_manifest(tmp_path / "batch", rows)
    put = runtime.store.put

    def put_then_retire(*args: Any, **kwargs: Any) -> Any:
        result = put(*args, **kwargs)
        monkeypatch.setattr(runtime.store, "put", put)  # once, during the first row
        runtime.keys.rotate(Actor.operator())
        runtime.keys.retire_below(Actor.operator(), 2)
        return result

    monkeypatch.setattr(runtime.store, "put", put_then_retire)
    summary = make_bulk(runtime).run(cast.registrar, load_all(path), workers=1)

    failed, stored = sorted(summary.results, key=lambda r: r.line)
    assert (failed.outcome, failed.reason) == (RowOutcome.FAILED, RowProblem.KEY_RETIRED)
    assert failed.detail is not None and "Upload it again" in failed.detail
    assert stored.outcome is RowOutcome.STORED  # the run went on, under version 2
    assert counts(runtime) == (1, 1, 1) and uploads_audited(runtime) == 1
    assert stored_keys("versions/") == version_keys(runtime) and intent_keys(runtime) == set()
    again = make_bulk(runtime).run(cast.registrar, load_all(path))
    assert (again.count(RowOutcome.STORED), again.count(RowOutcome.ALREADY_STORED)) == (1, 1)


def test_one_run_at_a_time(runtime: Runtime, cast: Cast, tmp_path: Path) -> None:
    files = write_files(tmp_path / "batch", 2)
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    path = write_manifest(tmp_path / "batch", rows)
    manifest = parse_manifest(path.read_bytes(), path.parent)
    second = make_bulk(runtime, lock_wait_seconds=0.5)
    refused: list[Exception] = []

    def start_another(result: RowResult) -> None:
        if not refused:
            try:
                second.run(cast.registrar, manifest)
            except IngestBusy as e:
                refused.append(e)

    make_bulk(runtime).run(cast.registrar, manifest, on_result=start_another)
    assert len(refused) == 1 and "Another `satchel ingest` is running" in str(refused[0])
    assert counts(runtime)[0] == 2
    # Once the first run is over, the lock is free again.
    assert second.run(cast.registrar, manifest).count(RowOutcome.ALREADY_STORED) == 2


def test_only_registrars_ingest(runtime: Runtime, cast: Cast, tmp_path: Path) -> None:
    files = write_files(tmp_path / "batch", 1)
    path = write_manifest(
        tmp_path / "batch", [[cast.child.district_id, "other", "x", "", "", next(iter(files))]]
    )
    manifest = parse_manifest(path.read_bytes(), path.parent)
    for actor in (cast.compliance, cast.admin, cast.parent, Actor.operator()):
        with pytest.raises(Forbidden):
            make_bulk(runtime).run(actor, manifest)
        with pytest.raises(Forbidden):
            make_bulk(runtime).ingest_one(actor, manifest.rows[0])
    assert counts(runtime) == (0, 0, 0)
    assert uploads_audited(runtime) == 0


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements sent through ``engine`` inside the block."""
    sent: list[str] = []

    def record(*args: object) -> None:
        sent.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_row_costs_one_insert_and_a_student_one_key_lookup(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    files = write_files(tmp_path / "batch", 6)
    students = [cast.child.district_id, cast.other_child.district_id]
    rows = [[students[i % 2], "other", f"Letter {i}", "", "", name] for i, name in enumerate(files)]
    manifest = load_all(write_manifest(tmp_path / "batch", rows))

    # One worker: with several, two rows of a new student may both look it up.
    with statements(runtime.engine) as sent:
        summary = make_bulk(runtime).run(cast.registrar, manifest, workers=1)

    assert summary.count(RowOutcome.STORED) == 6
    # The stored keys are read once per student, not once per row.
    assert len([s for s in sent if s.startswith("SELECT") and "FROM documents" in s]) == 2
    assert len([s for s in sent if "FROM students" in s]) == 2
    inserts = [s for s in sent if "INSERT INTO document" in s]
    if runtime.engine.dialect.name == "postgresql":
        # The document and its version in one statement.
        assert len(inserts) == 6 and all("INSERT INTO document_versions" in s for s in inserts)
    else:
        assert len(inserts) == 12
    assert uploads_audited(runtime) == 6

    with statements(runtime.engine) as sent:
        again = make_bulk(runtime).run(cast.registrar, manifest, workers=1)

    assert again.count(RowOutcome.ALREADY_STORED) == 6
    assert len([s for s in sent if s.startswith("SELECT") and "FROM documents" in s]) == 2
    assert not [s for s in sent if "INSERT INTO document" in s]


def test_a_row_repeated_after_its_first_copy_committed_is_not_stored_again(
    runtime: Runtime, cast: Cast, tmp_path: Path, stored_keys: Callable[[str], set[str]]
) -> None:
    files = write_files(tmp_path / "batch", 1)
    row = [cast.child.district_id, "iep", "IEP 2025", "2024-2025", "", next(iter(files))]
    manifest = load_all(write_manifest(tmp_path / "batch", [row] * 3))
    store = ObservedStore(runtime.store)

    # One worker: each repeat starts after the first copy committed.
    summary = observed_bulk(runtime, store).run(cast.registrar, manifest, workers=1)

    assert (summary.count(RowOutcome.STORED), summary.count(RowOutcome.ALREADY_STORED)) == (1, 2)
    # The run knew the key it had just committed: no object was put for the repeats
    # and none had to be deleted again.
    assert len(store.puts) == 1 and store.deleted == []
    assert counts(runtime) == (1, 1, 1)
    assert stored_keys("versions/") == version_keys(runtime)


class ObservedStore(ForwardingStore):
    """The runtime's store, recording the puts and deletions asked of it."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.puts: list[str] = []
        self.deleted: list[str] = []

    def put(
        self,
        key: str,
        stream: BinaryIO,
        size_hint: int | None = None,
        *,
        retain_until: datetime | None = None,
    ) -> ObjectInfo:
        self.puts.append(key)
        return super().put(key, stream, size_hint, retain_until=retain_until)

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def observed_bulk(runtime: Runtime, store: ObservedStore) -> BulkIngest:
    vault = Vault(store, runtime.keyring, max_bytes=runtime.settings.max_upload_bytes)
    return BulkIngest(runtime.engine, runtime.audit_log, vault, runtime.students, runtime.clock)


def test_each_object_is_one_put_and_intents_of_committed_rows_go_in_one_batch(
    runtime: Runtime, cast: Cast, tmp_path: Path, stored_keys: Callable[[str], set[str]]
) -> None:
    files = write_files(tmp_path / "batch", 6)
    bad = tmp_path / "batch" / "scans" / "trap.pdf"
    bad.write_bytes(samples.pdf_with_launch_action())
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    rows.append([cast.child.district_id, "other", "Trap", "", "", "scans/trap.pdf"])
    path = write_manifest(tmp_path / "batch", rows)
    store = ObservedStore(runtime.store)

    with statements(runtime.engine) as sent:
        summary = observed_bulk(runtime, store).run(cast.registrar, load_all(path), workers=3)

    assert summary.count(RowOutcome.STORED) == 6
    committed = version_keys(runtime)
    # The store saw one put per stored object and nothing else: no object was put for
    # the refused file, so nothing was deleted.
    assert sorted(store.puts) == sorted(committed)
    assert store.deleted == []
    # An intent committed before each put; all six removed in one statement.
    assert len([s for s in sent if s.startswith("INSERT INTO ingest_intents")]) == 6
    assert len([s for s in sent if s.startswith("DELETE FROM ingest_intents")]) == 1
    assert intent_keys(runtime) == set()
    assert stored_keys("versions/") == committed


def test_intents_a_failed_batch_leaves_are_removed_by_the_next_run(
    runtime: Runtime,
    cast: Cast,
    tmp_path: Path,
    stored_keys: Callable[[str], set[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = write_files(tmp_path / "batch", 3)
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    manifest = load_all(write_manifest(tmp_path / "batch", rows))

    def lost(self: IngestIntents, object_keys: Sequence[str]) -> None:
        raise OperationalError("DELETE FROM ingest_intents", {}, Exception("connection lost"))

    with monkeypatch.context() as patched:
        patched.setattr(IngestIntents, "remove", lost)
        first = make_bulk(runtime).run(cast.registrar, manifest)

    assert first.complete and first.count(RowOutcome.STORED) == 3
    committed = version_keys(runtime)
    assert intent_keys(runtime) == committed

    again = make_bulk(runtime).run(cast.registrar, manifest)

    # Those intents belong to committed versions: not unfinished uploads.
    assert again.unfinished_removed == 0 and again.count(RowOutcome.ALREADY_STORED) == 3
    assert intent_keys(runtime) == set()
    assert stored_keys("versions/") == committed == version_keys(runtime)


@pytest.mark.s3
def test_a_store_refusing_writes_stops_the_run_and_a_rerun_resumes(
    runtime: Runtime,
    cast: Cast,
    tmp_path: Path,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
) -> None:
    files = write_files(tmp_path / "batch", 8)
    rows = [
        [cast.child.district_id, "other", f"Letter {i}", "", "", n] for i, n in enumerate(files)
    ]
    path = write_manifest(tmp_path / "batch", rows)
    manifest = parse_manifest(path.read_bytes(), path.parent)
    # The read-only identity can list (recovery works) but every put is refused.
    read_only = S3ObjectStore(s3_server.client(read_only=True), s3_bucket, s3_prefix)
    refusing = BulkIngest(
        runtime.engine,
        runtime.audit_log,
        Vault(read_only, runtime.keyring, max_bytes=runtime.settings.max_upload_bytes),
        runtime.students,
        runtime.clock,
    )
    summary = refusing.run(cast.registrar, manifest, workers=2)
    assert not summary.complete and summary.count(RowOutcome.FAILED) == 8
    assert summary.stopped_by is not None and "access denied" in summary.stopped_by
    assert {r.reason for r in summary.results} <= {"storage_error", "not_attempted"}
    assert counts(runtime) == (0, 0, 0)

    resumed = make_bulk(runtime).run(cast.registrar, manifest)
    assert resumed.complete and resumed.count(RowOutcome.STORED) == 8


# --- the command -------------------------------------------------------------------------


def test_satchel_ingest_exit_code_summary_and_report(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    batch = tmp_path / "batch"
    files = write_files(batch, 4)
    rows = [
        [cast.child.district_id, "transcript", f"Transcript {i}", "", "2025-06-30", n]
        for i, n in enumerate(files)
    ]
    path = write_manifest(
        batch, [*rows, [cast.child.district_id, "x", "y", "", "", "z.pdf"]], name="june.csv"
    )
    env = {
        "SATCHEL_DATA_DIR": str(runtime.settings.data_dir),
        "SATCHEL_DATABASE_URL": runtime.settings.effective_database_url,
    }
    if runtime.settings.storage_backend is StorageBackend.S3:
        s = runtime.settings
        env |= {
            "SATCHEL_STORAGE_BACKEND": "s3",
            "SATCHEL_S3_ENDPOINT_URL": str(s.s3_endpoint_url),
            "SATCHEL_S3_BUCKET": str(s.s3_bucket),
            "SATCHEL_S3_PREFIX": s.s3_prefix,
            "SATCHEL_S3_REGION": s.s3_region,
            "SATCHEL_S3_ACCESS_KEY_ID": str(s.s3_access_key_id),
            "SATCHEL_S3_SECRET_ACCESS_KEY": str(s.s3_secret_access_key),
        }
    runner = CliRunner()
    args = ["ingest", str(path), "--as", cast.registrar.email, "--workers", "2"]
    first = runner.invoke(cli, args, env=env)
    assert first.exit_code == 1, first.output
    assert "4 stored, 0 already stored, 1 rejected, 0 failed of 5 rows" in first.output
    report = batch / "june.rejected.csv"
    assert "1 row not stored: see " + str(report) in first.output
    assert "bad_category" in report.read_text()

    fixed = write_manifest(batch, rows, name="june.csv")
    second = runner.invoke(
        cli,
        ["ingest", str(fixed), "--as", cast.registrar.email, "--report", str(tmp_path / "r.csv")],
        env=env,
    )
    assert second.exit_code == 0, second.output
    assert "0 stored, 4 already stored, 0 rejected, 0 failed of 4 rows" in second.output
    assert (tmp_path / "r.csv").read_text().strip() == ",".join(REPORT_COLUMNS)

    broken = runner.invoke(
        cli, ["ingest", str(batch / "scans" / "doc-0.pdf"), "--as", cast.registrar.email], env=env
    )
    assert broken.exit_code == 1 and "not UTF-8" in broken.output
    assert counts(runtime) == (4, 4, 4)


@pytest.mark.parametrize("command", [["ingest"], ["folder"], ["folder", "export"]])
def test_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output


def test_workers_option_is_bounded(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + "\n")
    result = CliRunner().invoke(cli, ["ingest", str(manifest), "--as", "r@x", "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output


def cli_env(runtime: Runtime) -> dict[str, str]:
    assert runtime.settings.storage_backend is StorageBackend.LOCAL
    return {
        "SATCHEL_DATA_DIR": str(runtime.settings.data_dir),
        "SATCHEL_DATABASE_URL": runtime.settings.effective_database_url,
    }


def error_lines(result: Result) -> list[str]:
    """The ``Error:`` lines of a command that ended with an exit code, not a traceback."""
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
def test_satchel_ingest_prints_its_counts_when_the_report_cannot_be_written(
    runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = tmp_path / "batch"
    files = write_files(batch, 2)
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    path = write_manifest(batch, rows, name="june.csv")
    report = batch / "june.rejected.csv"
    real_open = os.open

    def read_only_directory(
        file: StrPath, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        # The report's temporary file, as a read-only manifest directory refuses it.
        if os.fsdecode(file).startswith(f"{batch}/.june.rejected.csv."):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(file))
        return real_open(file, flags, mode, dir_fd=dir_fd)

    with monkeypatch.context() as patched:
        patched.setattr(os, "open", read_only_directory)
        result = CliRunner().invoke(
            cli, ["ingest", str(path), "--as", cast.registrar.email], env=cli_env(runtime)
        )

    assert result.exit_code == 1, result.output
    # The counts first: the rows are stored whatever becomes of the report.
    assert "2 stored, 0 already stored, 0 rejected, 0 failed of 2 rows" in result.output
    [line] = error_lines(result)
    assert line.startswith(f"Error: cannot write the report {report}: Read-only file system;")
    assert "--report PATH" in line
    assert not report.exists() and counts(runtime) == (2, 2, 2)

    elsewhere = tmp_path / "report.csv"
    again = CliRunner().invoke(
        cli,
        ["ingest", str(path), "--as", cast.registrar.email, "--report", str(elsewhere)],
        env=cli_env(runtime),
    )
    assert again.exit_code == 0, again.output
    assert "0 stored, 2 already stored" in again.output
    assert elsewhere.read_text().strip() == ",".join(REPORT_COLUMNS)


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
def test_satchel_ingest_refuses_a_report_path_it_cannot_use_before_storing_anything(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    batch = tmp_path / "batch"
    files = write_files(batch, 1)
    path = write_manifest(
        batch, [[cast.child.district_id, "other", "Note", "", "", next(iter(files))]]
    )
    (tmp_path / "a-file").write_text("mine")
    (batch / "manifest.rejected.csv").mkdir()  # where the default report would go
    args = ["ingest", str(path), "--as", cast.registrar.email]

    inside_a_file = CliRunner().invoke(
        cli, [*args, "--report", str(tmp_path / "a-file" / "r.csv")], env=cli_env(runtime)
    )
    a_directory = CliRunner().invoke(cli, args, env=cli_env(runtime))

    assert inside_a_file.exit_code == a_directory.exit_code == 2
    assert error_lines(inside_a_file) == [
        f"Error: Invalid value for '--report': {tmp_path / 'a-file'} is not a directory"
    ]
    assert error_lines(a_directory) == [
        f"Error: Invalid value for '--report': {batch / 'manifest.rejected.csv'} is a directory"
    ]
    assert counts(runtime) == (0, 0, 0) and uploads_audited(runtime) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("runtime", ["local"], indirect=True)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_database_outage_mid_run_fails_the_rest_and_a_rerun_resumes(
    runtime: Runtime,
    cast: Cast,
    tmp_path: Path,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL goes away after the first row: every connection is terminated (the
    run's lock connection too) and no new one is accepted. The run still ends as the
    documentation says: the rest of the rows failed, and running again resumes. The
    lock's release on its dead connection must not replace that outcome."""
    files = write_files(tmp_path / "batch", 6)
    rows = [[cast.child.district_id, "other", f"Note {i}", "", "", n] for i, n in enumerate(files)]
    manifest = load_all(write_manifest(tmp_path / "batch", rows))
    database = runtime.engine.url.database
    admin = psycopg.connect(libpq_url(postgres_server.admin_url), autocommit=True)
    happened: list[bool] = []

    def outage(result: RowResult) -> None:
        if result.outcome is not RowOutcome.STORED or happened:
            return
        happened.append(True)
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        pids = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
        for (pid,) in pids:
            postgres_server.terminate_backend(pid)

    try:
        summary = make_bulk(runtime).run(cast.registrar, manifest, workers=1, on_result=outage)
    finally:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        admin.close()

    assert happened and not summary.complete and summary.stopped_by is not None
    stored = summary.count(RowOutcome.STORED)
    assert stored >= 1 and summary.count(RowOutcome.FAILED) == 6 - stored
    # The row the outage struck failed in its insert or in its audit event.
    reasons = {r.reason for r in summary.not_stored}
    assert reasons <= {"database_error", "audit_unavailable", "not_attempted"}
    # The lock's connection was gone too: its release failed, and said so.
    assert "the ingest lock was not released explicitly" in caplog.text

    resumed = make_bulk(runtime).run(cast.registrar, manifest)
    assert resumed.complete
    assert resumed.count(RowOutcome.ALREADY_STORED) == stored
    assert counts(runtime) == (6, 6, 6) and intent_keys(runtime) == set()


@pytest.mark.postgres
def test_the_ingest_lock_outlives_an_idle_session_timeout(postgres_database_url: str) -> None:
    """The lock's connection idles for the whole run; a database whose sessions end after
    300 ms of idling must not end it (and free the lock) under a running ingest."""
    name = postgres_database_url.rsplit("/", 1)[1]
    with psycopg.connect(libpq_url(postgres_database_url), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET idle_session_timeout = 300')
    engine, other = make_engine(postgres_database_url), make_engine(postgres_database_url)
    try:
        with IngestLock(engine).held():
            time.sleep(1.0)  # more than three timeouts of idling
            with pytest.raises(IngestBusy), IngestLock(other, wait_seconds=0).held():
                pass
    finally:
        engine.dispose()
        other.dispose()


def test_the_report_shows_control_characters_as_replacement_characters(tmp_path: Path) -> None:
    """Spreadsheet programs may stop reading at a NUL: the report never contains one."""
    report = tmp_path / "batch.rejected.csv"
    cells = ("D-1", "iep", "IEP\x00 review\x1b", "", "", "=cmd|' /C calc'!A0")
    rejected = RowResult(2, cells, RowOutcome.REJECTED, "bad_title", "Bad\x07 title.")
    write_report(report, [rejected])
    text = report.read_text(encoding="utf-8")
    assert "\x00" not in text and "\x1b" not in text and "\x07" not in text
    [_, row] = list(csv.reader(io.StringIO(text)))
    assert row[3] == "IEP\ufffd review\ufffd" and row[-1] == "Bad\ufffd title."
    assert row[6] == "'=cmd|' /C calc'!A0"  # still no formula
