"""Folder export: byte-identical files, a manifest that tells the truth, nothing at all
when one document fails its integrity check or the file system refuses a write, the
audit trail of it, and the scratch directories of killed exports removed."""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result
from minio import Minio
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.events import Action, Outcome
from config import Settings, StorageBackend
from folders.bootstrap import initialize
from folders.bulk import MANIFEST_COLUMNS, BulkIngest, RowOutcome, parse_manifest
from folders.errors import Forbidden, InvalidInput
from folders.export import ExportFailed, FolderExport, remove_abandoned_exports
from folders.models import Document, DocumentVersion
from folders.runtime import Runtime
from tests.support import samples
from tests.support.people import Cast, upload_pdf
from web.cli import cli

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike, StrPath

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


# --- a file system that refuses, and exports that were killed ----------------------------


def fd_path(fd: int) -> str:
    """What the descriptor ``fd`` of this process is open on."""
    return os.readlink(f"/proc/self/fd/{fd}")


def refuse_mkdir(
    monkeypatch: pytest.MonkeyPatch, refused: Callable[[Path], bool], errno_: int
) -> None:
    """``os.mkdir`` fails with ``errno_`` for the paths ``refused`` picks (as for a
    directory its owner may not write, which root running the tests could)."""
    real = os.mkdir

    def mkdir(path: StrPath, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if refused(Path(os.fsdecode(path))):
            raise OSError(errno_, os.strerror(errno_), os.fsdecode(path))
        real(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir)


def refuse_fsync(
    monkeypatch: pytest.MonkeyPatch, refused: Callable[[str], bool], errno_: int
) -> None:
    """``os.fsync`` fails with ``errno_`` for descriptors open on a path ``refused``
    picks (a full disk reports ENOSPC when the data is flushed)."""
    real = os.fsync

    def fsync(fd: FileDescriptorLike) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        if refused(fd_path(number)):
            raise OSError(errno_, os.strerror(errno_))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def in_scratch(name: str) -> Callable[[str], bool]:
    return lambda path: ".out.partial-" in path and path.endswith(name)


def unwritable_parent(monkeypatch: pytest.MonkeyPatch, transfer: Path) -> str:
    refuse_mkdir(monkeypatch, lambda p: p.parent == transfer, errno.EACCES)
    return f"cannot create a directory in {transfer}: Permission denied."


def read_only_documents_folder(monkeypatch: pytest.MonkeyPatch, transfer: Path) -> str:
    refuse_mkdir(monkeypatch, lambda p: p.name == "documents", errno.EROFS)
    return "/documents: Read-only file system."


def full_disk_at_a_document(monkeypatch: pytest.MonkeyPatch, transfer: Path) -> str:
    refuse_fsync(monkeypatch, in_scratch(".pdf"), errno.ENOSPC)
    return "('Report card'): No space left on device."


def full_disk_at_the_manifest(monkeypatch: pytest.MonkeyPatch, transfer: Path) -> str:
    refuse_fsync(monkeypatch, in_scratch("/manifest.json"), errno.ENOSPC)
    return "manifest.json in "


def scratch_not_flushed(monkeypatch: pytest.MonkeyPatch, transfer: Path) -> str:
    refuse_fsync(monkeypatch, lambda p: ".out.partial-" in p and Path(p).is_dir(), errno.EIO)
    return "to disk: Input/output error."


# Each makes one step of an export fail, and returns part of the message it expects.
FAILURES: dict[str, Callable[[pytest.MonkeyPatch, Path], str]] = {
    "scratch directory": unwritable_parent,
    "documents directory": read_only_documents_folder,
    "document full disk": full_disk_at_a_document,
    "manifest full disk": full_disk_at_the_manifest,
    "scratch flush": scratch_not_flushed,
}


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
@pytest.mark.parametrize("failure", FAILURES)
def test_a_refusing_file_system_stops_the_export_records_it_and_leaves_nothing(
    runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    upload_pdf(runtime, cast, cast.child)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    expected = FAILURES[failure](monkeypatch, transfer)

    with pytest.raises(ExportFailed) as raised:
        exporter(runtime).export(cast.registrar, cast.child.id, transfer / "out", purpose=PURPOSE)

    monkeypatch.undo()
    message = raised.value.public_message
    assert message.startswith("The export was stopped and nothing was written: cannot ")
    assert expected in message and "\n" not in message
    assert list(transfer.iterdir()) == []  # no folder, no scratch with decrypted files
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ALLOWED) == 0
    [event] = runtime.audit_log.query(action=Action.FOLDER_EXPORT, per_page=5).items
    assert event.event.outcome is Outcome.ERROR and event.event.detail == message


def cli_env(runtime: Runtime) -> dict[str, str]:
    settings = runtime.settings
    assert settings.storage_backend is StorageBackend.LOCAL
    return {
        "SATCHEL_DATA_DIR": str(settings.data_dir),
        "SATCHEL_DATABASE_URL": settings.effective_database_url,
    }


def error_lines(result: Result) -> list[str]:
    """The ``Error:`` lines of a command that ended as Satchel means commands to end:
    with an exit code, never with an escaped exception (a traceback)."""
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
def test_satchel_folder_export_names_a_refusing_file_system_in_one_line(
    runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_pdf(runtime, cast, cast.child)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    base = ["folder", "export", cast.child.district_id, "--as", cast.registrar.email, "--out"]
    runner = CliRunner()

    with monkeypatch.context() as patched:
        refuse_mkdir(patched, lambda p: p.parent == transfer, errno.EACCES)
        unwritable = runner.invoke(cli, [*base, str(transfer / "out")], env=cli_env(runtime))
    assert unwritable.exit_code == 1, unwritable.output
    [line] = error_lines(unwritable)
    assert line == (
        "Error: The export was stopped and nothing was written: cannot create a directory "
        f"in {transfer}: Permission denied."
    )

    with monkeypatch.context() as patched:
        refuse_fsync(patched, in_scratch("/manifest.json"), errno.ENOSPC)
        full = runner.invoke(cli, [*base, str(transfer / "out")], env=cli_env(runtime))
    assert full.exit_code == 1, full.output
    [line] = error_lines(full)
    assert line.endswith(": No space left on device.") and "manifest.json" in line

    assert list(transfer.iterdir()) == []
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ERROR) == 2
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ALLOWED) == 0

    # A regular file where the parent directory should be is refused before anything.
    (tmp_path / "a-file").write_text("mine")
    misplaced = runner.invoke(cli, [*base, str(tmp_path / "a-file" / "out")], env=cli_env(runtime))
    assert misplaced.exit_code == 1
    assert error_lines(misplaced) == [f"Error: {tmp_path / 'a-file'} is not a directory."]


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
def test_an_export_in_place_is_a_success_even_if_its_parent_cannot_be_flushed(
    runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = upload_pdf(runtime, cast, cast.child)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    args = ["folder", "export", cast.child.district_id, "--as", cast.registrar.email]

    with monkeypatch.context() as patched:
        refuse_fsync(patched, lambda p: p == str(transfer), errno.EIO)
        result = CliRunner().invoke(
            cli, [*args, "--out", str(transfer / "out")], env=cli_env(runtime)
        )

    # The export is complete, verified and audited: the command says so, and warns.
    assert result.exit_code == 0, result.output
    assert error_lines(result) == []
    assert "exported 1 document " in result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert f"the export is complete at {transfer / 'out'}" in warning
    assert "Input/output error" in warning
    [entry] = json.loads((transfer / "out" / "manifest.json").read_bytes())["documents"]
    assert (transfer / "out" / entry["file"]).read_bytes() == data
    assert [p.name for p in transfer.iterdir()] == ["out"]
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ALLOWED) == 1
    assert audited(runtime, Action.FOLDER_EXPORT, Outcome.ERROR) == 0


def abandoned_export(parent: Path, name: str) -> Path:
    """What a killed export leaves: its scratch directory, with decrypted documents."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    (scratch / "documents").mkdir()
    (scratch / "documents" / f"{uuid.uuid4()}.pdf").write_bytes(samples.make_pdf())
    return scratch


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
def test_the_next_export_removes_what_killed_exports_left_and_nothing_else(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    upload_pdf(runtime, cast, cast.child)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    killed = [abandoned_export(transfer, "out"), abandoned_export(transfer, "S-9 2024")]
    live = abandoned_export(transfer, "elsewhere")
    # Not an export's scratch directory: another name, a file, a link to a directory.
    others = [transfer / ".notes.partial-1", transfer / "out.partial-abcd1234"]
    for other in others:
        other.mkdir()
    (transfer / ".file.partial-abcd1234").write_text("mine")
    (transfer / ".link.partial-abcd1234").symlink_to(others[0])

    # A live export holds the lock on its scratch directory until it ends.
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = exporter(runtime).export(
            cast.registrar, cast.child.id, transfer / "out", purpose=PURPOSE
        )
        assert live.is_dir() and any(live.rglob("*.pdf"))  # untouched while it runs
    finally:
        os.close(fd)

    assert sorted(result.abandoned_removed) == sorted(killed) and result.warnings == ()
    assert sorted(p.name for p in transfer.iterdir()) == sorted(
        [
            "out",
            live.name,
            *(o.name for o in others),
            ".file.partial-abcd1234",
            ".link.partial-abcd1234",
        ]
    )
    assert (transfer / "out" / "manifest.json").is_file()

    # Once its export is dead, the next export removes it too.
    again = exporter(runtime).export(
        cast.registrar, cast.child.id, transfer / "again", purpose=PURPOSE
    )
    assert again.abandoned_removed == (live,) and not live.exists()


@pytest.mark.parametrize("runtime", ["local"], indirect=True)
@pytest.mark.parametrize("when", ["before its open", "before its lock"])
def test_an_export_whose_new_scratch_directory_another_clean_up_takes_makes_another(
    runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A concurrent export's clean-up can find a scratch directory in the instant between
    its making and its lock, and remove it as abandoned: the export makes another."""
    _info, data = upload_pdf(runtime, cast, cast.child)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    taken: list[Path] = []
    make, open_dir = tempfile.mkdtemp, os.open

    def made_then_taken(*args: Any, **kwargs: Any) -> str:
        made = make(*args, **kwargs)
        if when == "before its open" and not taken:
            taken.extend(remove_abandoned_exports(transfer)[0])
        return made

    def opened_then_taken(path: Any, *args: Any, **kwargs: Any) -> int:
        fd = open_dir(path, *args, **kwargs)
        if when == "before its lock" and not taken and ".out.partial-" in str(path):
            monkeypatch.setattr("folders.export.os.open", open_dir)  # the clean-up's own
            taken.extend(remove_abandoned_exports(transfer)[0])
        return fd

    monkeypatch.setattr("folders.export.tempfile.mkdtemp", made_then_taken)
    monkeypatch.setattr("folders.export.os.open", opened_then_taken)
    result = exporter(runtime).export(
        cast.registrar, cast.child.id, transfer / "out", purpose=PURPOSE
    )

    assert len(taken) == 1 and taken[0].name.startswith(".out.partial-")
    assert result.directory == transfer / "out"
    [entry] = json.loads((transfer / "out" / "manifest.json").read_bytes())["documents"]
    assert (transfer / "out" / entry["file"]).read_bytes() == data
    assert [p.name for p in transfer.iterdir()] == ["out"]


_HOLDER = """
import sys, time
from pathlib import Path
from folders.export import _scratch_for

with _scratch_for(Path(sys.argv[1])) as scratch:
    (scratch / "documents").mkdir()
    (scratch / "documents" / "decrypted.pdf").write_bytes(b"%PDF-1.7 plaintext")
    print(scratch, flush=True)
    time.sleep(120)
"""


def test_a_scratch_directory_is_kept_while_its_export_lives_and_removed_once_killed(
    tmp_path: Path,
) -> None:
    """A real process holds a scratch directory as an export does, and is killed with
    SIGKILL: its lock dies with it, so the next clean-up removes what it left."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "D-1")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    ) as holder:
        try:
            assert holder.stdout is not None
            scratch = Path(holder.stdout.readline().strip())
            assert scratch.parent == tmp_path and scratch.name.startswith(".D-1.partial-")

            assert remove_abandoned_exports(tmp_path) == ((), ())  # alive: untouched
            assert (scratch / "documents" / "decrypted.pdf").is_file()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)

    assert remove_abandoned_exports(tmp_path) == ((scratch,), ())
    assert list(tmp_path.iterdir()) == []
