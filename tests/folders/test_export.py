"""Folder export: byte-identical files, a manifest that tells the truth, nothing at all
when one document fails its integrity check, and the audit trail of it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from minio import Minio
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.events import Action, Outcome
from config import Settings, StorageBackend
from folders.bootstrap import initialize
from folders.bulk import MANIFEST_COLUMNS, BulkIngest, RowOutcome, parse_manifest
from folders.errors import Forbidden, InvalidInput
from folders.export import ExportFailed, FolderExport
from folders.models import Document, DocumentVersion
from folders.runtime import Runtime
from tests.support import samples
from tests.support.people import Cast, upload_pdf
from web.cli import cli

PURPOSE = "records transfer"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def runtime(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    """Each test runs with objects in the local store and on SeaweedFS."""
    chosen = settings if request.param == "local" else request.getfixturevalue("s3_settings")
    runtime = Runtime(chosen)
    initialize(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def tamper(request: pytest.FixtureRequest, runtime: Runtime) -> Callable[[str], None]:
    """Flip one bit in the middle of a stored object, behind Satchel's back."""
    settings = runtime.settings

    def flipped(data: bytes) -> bytes:
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        return bytes(changed)

    if settings.storage_backend is StorageBackend.S3:
        client: Minio = request.getfixturevalue("minio_client")
        bucket = str(settings.s3_bucket)

        def on_s3(key: str) -> None:
            response = client.get_object(bucket, settings.s3_prefix + key)
            try:
                data = flipped(response.read())
            finally:
                response.close()
                response.release_conn()
            client.put_object(bucket, settings.s3_prefix + key, io.BytesIO(data), len(data))

        return on_s3

    def on_disk(key: str) -> None:
        path = settings.objects_dir / key
        path.write_bytes(flipped(path.read_bytes()))

    return on_disk


def exporter(runtime: Runtime) -> FolderExport:
    return FolderExport(runtime.engine, runtime.audit_log, runtime.documents, runtime.clock)


def ingest_scans(runtime: Runtime, cast: Cast, directory: Path, count: int) -> dict[str, bytes]:
    """Bulk-ingest ``count`` scans into the child's folder; return title -> file bytes."""
    (directory / "scans").mkdir(parents=True)
    files: dict[str, bytes] = {}
    rows = []
    for i in range(count):
        if i % 2:
            name, data = f"scans/{i}.tiff", samples.make_tiff(pages=2, width=9 + i)
        else:
            name, data = f"scans/{i}.pdf", samples.make_pdf(pages=1 + i % 3, text=f"page {i}")
        (directory / name).write_bytes(data)
        title = f"Scanned record {i}"
        files[title] = data
        category = ("report_card", "health", "iep")[i % 3]
        rows.append([cast.child.district_id, category, title, "2023-2024", "2024-05-01", name])
    manifest = directory / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    bulk = BulkIngest(
        runtime.engine, runtime.audit_log, runtime.vault, runtime.students, runtime.clock
    )
    summary = bulk.run(cast.registrar, parse_manifest(manifest.read_bytes(), directory))
    assert summary.count(RowOutcome.STORED) == count
    return files


def object_key_of(runtime: Runtime, title: str) -> str:
    with Session(runtime.engine) as session:
        key = session.scalar(
            select(DocumentVersion.object_key).join(Document).where(Document.title == title)
        )
    assert key is not None
    return key


def audited(runtime: Runtime, action: Action, outcome: Outcome | None = None) -> int:
    return runtime.audit_log.query(action=action, outcome=outcome, per_page=1).total


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_export_gives_byte_identical_files_and_a_truthful_manifest(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    files = ingest_scans(runtime, cast, tmp_path / "batch", 6)
    upload_pdf(runtime, cast, cast.other_child, "Another family's record")
    downloads_before = audited(runtime, Action.DOCUMENT_DOWNLOAD)
    out = tmp_path / "transfer" / "lopez"
    out.parent.mkdir()

    result = exporter(runtime).export(cast.registrar, cast.child.id, out, purpose=PURPOSE)

    assert result.directory == out and len(result.documents) == 6
    manifest_bytes = (out / "manifest.json").read_bytes()
    assert sha256(manifest_bytes) == result.manifest_sha256
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == "satchel-folder-export" and manifest["purpose"] == PURPOSE
    assert manifest["student"]["district_id"] == cast.child.district_id
    assert manifest["exported_by"] == cast.registrar.email
    assert {d["title"] for d in manifest["documents"]} == set(files)
    for entry in manifest["documents"]:
        exported = (out / entry["file"]).read_bytes()
        original = files[entry["title"]]
        assert sha256(exported) == sha256(original) == entry["version"]["sha256"]
        assert exported == original and entry["version"]["size"] == len(original)
        assert entry["version"]["number"] == 1 and entry["versions"] == 1
        assert entry["category"] in ("report_card", "health", "iep")
        assert entry["school_year"] == "2023-2024" and entry["effective_date"] == "2024-05-01"
        assert entry["file"].endswith(".pdf" if original.startswith(b"%PDF") else ".tif")
        assert not entry["destroyed"]
    listed = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert listed == {"manifest.json", *(d["file"] for d in manifest["documents"])}
    # SECURITY: decrypted student records are readable by their owner only.
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((out / f).stat().st_mode) == 0o600 for f in listed)
    assert [p.name for p in out.parent.iterdir()] == ["lopez"]  # no scratch left behind

    assert audited(runtime, Action.DOCUMENT_DOWNLOAD) - downloads_before == 6
    [event] = runtime.audit_log.query(action=Action.FOLDER_EXPORT, per_page=5).items
    assert event.event.outcome is Outcome.ALLOWED and event.event.purpose == PURPOSE
    assert event.event.student_id == str(cast.child.id)
    assert event.event.detail is not None and result.manifest_sha256 in event.event.detail


def test_export_takes_each_documents_current_version(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    info, _old = upload_pdf(runtime, cast, cast.child, "Progress report", text="draft")
    corrected = samples.make_pdf(pages=2, text="corrected")
    runtime.documents.upload_version(cast.registrar, info.id, io.BytesIO(corrected), "v2.pdf")
    out = tmp_path / "out"
    exporter(runtime).export(cast.registrar, cast.child.id, out, purpose=PURPOSE)
    [entry] = json.loads((out / "manifest.json").read_bytes())["documents"]
    assert (entry["versions"], entry["version"]["number"]) == (2, 2)
    assert (out / entry["file"]).read_bytes() == corrected


def test_a_tampered_document_stops_the_export_and_leaves_nothing(
    runtime: Runtime, cast: Cast, tmp_path: Path, tamper: Callable[[str], None]
) -> None:
    ingest_scans(runtime, cast, tmp_path / "batch", 4)
    tamper(object_key_of(runtime, "Scanned record 2"))
    transfer = tmp_path / "transfer"
    transfer.mkdir()

    with pytest.raises(ExportFailed) as raised:
        exporter(runtime).export(cast.registrar, cast.child.id, transfer / "out", purpose=PURPOSE)

    message = raised.value.public_message
    assert "'Scanned record 2'" in message and "integrity check" in message
    assert "nothing was written" in message
    assert list(transfer.iterdir()) == []  # no folder, no manifest, no scratch
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ALLOWED) == 0
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ERROR) == 1
    assert audited(runtime, Action.DOCUMENT_DOWNLOAD, Outcome.ERROR) == 1


def test_a_destroyed_version_is_listed_without_a_file(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    kept, kept_bytes = upload_pdf(runtime, cast, cast.child, "Transcript")
    shredded, _ = upload_pdf(runtime, cast, cast.child, "Permission slip")
    runtime.keys.shred_version(cast.admin, shredded.current.id, "retention period over")
    out = tmp_path / "out"
    result = exporter(runtime).export(cast.registrar, cast.child.id, out, purpose=PURPOSE)
    entries = {e["title"]: e for e in json.loads((out / "manifest.json").read_bytes())["documents"]}
    assert entries["Permission slip"]["destroyed"] and entries["Permission slip"]["file"] is None
    assert (out / entries["Transcript"]["file"]).read_bytes() == kept_bytes
    assert result.bytes_written == len(kept_bytes) and kept.id != shredded.id


def test_the_destination_must_be_new(runtime: Runtime, cast: Cast, tmp_path: Path) -> None:
    upload_pdf(runtime, cast, cast.child)
    here = tmp_path / "exports"
    (here / "full").mkdir(parents=True)
    (here / "full" / "keep.txt").write_text("mine")
    (here / "a-file").write_text("mine")
    for target in (here / "full", here / "a-file", here / "no" / "parent"):
        with pytest.raises(InvalidInput):
            exporter(runtime).export(cast.registrar, cast.child.id, target, purpose=PURPOSE)
    assert (here / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in here.iterdir()) == ["a-file", "full"]
    (here / "empty").mkdir()
    exporter(runtime).export(cast.registrar, cast.child.id, here / "empty", purpose=PURPOSE)
    assert (here / "empty" / "manifest.json").is_file()


def test_only_registrars_export_and_refusals_are_audited(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    upload_pdf(runtime, cast, cast.child)
    for actor in (cast.compliance, cast.admin, cast.parent):
        with pytest.raises(Forbidden):
            exporter(runtime).export(actor, cast.child.id, tmp_path / "out", purpose=PURPOSE)
    assert not (tmp_path / "out").exists()
    denied = runtime.audit_log.query(action=Action.ACCESS_DENIED, per_page=10).items
    assert len(denied) == 3 and all("folder.export" in str(e.event.detail) for e in denied)
    with pytest.raises(InvalidInput, match="purpose"):
        exporter(runtime).export(cast.registrar, cast.child.id, tmp_path / "out", purpose=" ")


def test_satchel_folder_export(
    runtime: Runtime, cast: Cast, tmp_path: Path, tamper: Callable[[str], None]
) -> None:
    files = ingest_scans(runtime, cast, tmp_path / "batch", 3)
    settings = runtime.settings
    env = {
        "SATCHEL_DATA_DIR": str(settings.data_dir),
        "SATCHEL_DATABASE_URL": settings.effective_database_url,
    }
    if settings.storage_backend is StorageBackend.S3:
        env |= {
            "SATCHEL_STORAGE_BACKEND": "s3",
            "SATCHEL_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
            "SATCHEL_S3_BUCKET": str(settings.s3_bucket),
            "SATCHEL_S3_PREFIX": settings.s3_prefix,
            "SATCHEL_S3_REGION": settings.s3_region,
            "SATCHEL_S3_ACCESS_KEY_ID": str(settings.s3_access_key_id),
            "SATCHEL_S3_SECRET_ACCESS_KEY": str(settings.s3_secret_access_key),
        }
    runner = CliRunner()
    base = ["folder", "export", cast.child.district_id, "--as", cast.registrar.email]

    done = runner.invoke(cli, [*base, "--out", str(tmp_path / "ok")], env=env)
    assert done.exit_code == 0, done.output
    assert "exported 3 documents" in done.output and str(tmp_path / "ok") in done.output
    exported = json.loads((tmp_path / "ok" / "manifest.json").read_bytes())["documents"]
    assert sorted(sha256((tmp_path / "ok" / d["file"]).read_bytes()) for d in exported) == sorted(
        sha256(data) for data in files.values()
    )
    [event] = runtime.audit_log.query(action=Action.FOLDER_EXPORT, per_page=5).items
    assert event.event.purpose == PURPOSE

    tamper(object_key_of(runtime, "Scanned record 1"))
    failed = runner.invoke(
        cli, [*base, "--out", str(tmp_path / "bad"), "--purpose", "audit"], env=env
    )
    assert failed.exit_code == 1
    assert "failed its integrity check" in failed.output
    assert not (tmp_path / "bad").exists()

    unknown = runner.invoke(
        cli,
        ["folder", "export", "S-404", "--as", cast.registrar.email, "--out", str(tmp_path / "x")],
        env=env,
    )
    assert unknown.exit_code == 1 and "No student with the district id S-404" in unknown.output

    # A guardian is refused before the student is looked up, and the refusal is audited.
    as_parent = ["folder", "export", cast.child.district_id, "--as", cast.parent.email]
    refused = runner.invoke(cli, [*as_parent, "--out", str(tmp_path / "theirs")], env=env)
    assert refused.exit_code == 1, refused.output
    assert "You are not allowed to do this." in refused.output
    assert not (tmp_path / "theirs").exists()
    [denied] = runtime.audit_log.query(action=Action.ACCESS_DENIED, per_page=5).items
    assert denied.event.actor_id == str(cast.parent.user_id)
    assert denied.event.detail == "folder.export: role not permitted"
