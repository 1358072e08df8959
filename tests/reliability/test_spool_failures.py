"""The spool directory (``DATA_DIR/tmp``) failing under an upload, and ``satchel doctor``.

Uploads larger than the memory spool spill, encrypted, to files in the spool directory.
When it is missing, not a directory, or full, the upload answers 503 with the reason
(the log names the directory), stores nothing of that file, and a multi-file upload
lists the files stored before it; ``satchel doctor`` names the directory.

The tests run as root, so a directory's mode would not stop them: the directory is
removed, replaced by a regular file, or its spill files are given a full disk at the
file boundary (each write fails with ENOSPC once the room is used up).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from audit.events import Action
from folders.doctor import run_checks
from folders.models import Document, DocumentVersion
from folders.runtime import Runtime
from storage.errors import SpoolUnavailable, StorageUnavailable
from tests.support import samples
from tests.support.disks import FullDisk, fill_disk
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import events, signed_in
from web.errors import status_for

# Cheap Argon2id and a clock of the test's own (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime

MIB = 1024 * 1024
REASONS = {
    "missing": "No such file or directory",
    "a file": "Not a directory",
    "full": "No space left on device",
}


def break_spool_dir(
    runtime: Runtime, how: str, monkeypatch: pytest.MonkeyPatch, *, room: int = MIB
) -> tuple[Path, list[FullDisk]]:
    """Break the runtime's spool directory ``how`` (a "full" one has ``room`` bytes
    left); the directory and the full disks made."""
    spool_dir = runtime.settings.data_dir / "tmp"
    disks: list[FullDisk] = []
    if how == "missing":
        shutil.rmtree(spool_dir)
    elif how == "a file":
        shutil.rmtree(spool_dir)
        spool_dir.write_bytes(b"")
    else:
        disks = fill_disk(monkeypatch, room)
    return spool_dir, disks


def large_scan(size: int) -> bytes:
    """A one-page greyscale TIFF of about ``size`` bytes: past the 8 MiB memory spool."""
    side = int(size**0.5)
    return samples.make_tiff(pages=1, width=side, height=side)


def post_files(client: FlaskClient, url: str, files: list[tuple[bytes, str]]) -> TestResponse:
    """Submit the multi-file form, encoded in memory (the test client would spill a large
    body to a temporary file of its own)."""
    fields = {
        "csrf_token": helpers.csrf(client),
        "form": "multi",
        "category": "report_card",
        "school_year": "2025-2026",
        "files": [FileStorage(io.BytesIO(data), filename=name) for data, name in files],
    }
    boundary, body = encode_multipart(fields)
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def stored(runtime: Runtime) -> tuple[int, int, list[str], int]:
    """Document rows, version rows, object keys, and upload events."""
    with Session(runtime.engine) as session:
        documents = session.scalar(select(func.count()).select_from(Document)) or 0
        versions = session.scalar(select(func.count()).select_from(DocumentVersion)) or 0
    objects = [info.key for info in runtime.store.list("versions/")]
    return documents, versions, objects, len(events(runtime, Action.DOCUMENT_UPLOAD))


def rejected_block(html: str) -> str:
    block = re.search(r'<div role="alert" class="rejected">(.*?)</div>', html, re.S)
    assert block is not None, html
    return block.group(1)


@pytest.mark.parametrize("how", list(REASONS))
def test_a_large_upload_with_a_failing_spool_dir_is_503_and_stores_nothing(
    app: Flask,
    runtime: Runtime,
    cast: Cast,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    client = signed_in(app, cast.registrar.email)
    spool_dir, disks = break_spool_dir(runtime, how, monkeypatch)
    with caplog.at_level(logging.ERROR):
        response = post_files(
            client,
            f"/registrar/students/{cast.child.id}/upload",
            [(large_scan(9 * MIB), "folder-scan.tif")],
        )
    html = response.get_data(as_text=True)
    assert response.status_code == 503, html
    reasons = rejected_block(html)
    assert "<strong>folder-scan.tif</strong>" in reasons
    assert f"temporary space for large uploads failed ({REASONS[how]})" in reasons
    assert str(spool_dir) not in html  # the server's paths are for the log
    # The log names the directory, what failed and the operating system's reason.
    assert f"upload spool directory {spool_dir}" in caplog.text
    assert REASONS[how] in caplog.text
    assert stored(runtime) == (0, 0, [], 0)
    assert all(disk.file.closed for disk in disks)


@pytest.mark.parametrize("how", ["missing", "full"])
def test_a_multi_file_upload_stopped_by_the_spool_dir_lists_the_files_stored(
    app: Flask, runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    client = signed_in(app, cast.registrar.email)
    break_spool_dir(runtime, how, monkeypatch)
    response = post_files(
        client,
        f"/registrar/students/{cast.child.id}/upload",
        [
            (samples.make_pdf(pages=1, text="first"), "card_1.pdf"),
            (large_scan(9 * MIB), "folder-scan.tif"),
            (samples.make_pdf(pages=1, text="third"), "card_3.pdf"),
        ],
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 503, html
    assert "1 file was stored" in html and "2 files were not stored" in html
    reasons = rejected_block(html)
    assert "<strong>folder-scan.tif</strong>: The server&#39;s temporary space" in reasons
    assert REASONS[how] in reasons
    assert "<strong>card_3.pdf</strong>: Not tried" in reasons
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert document.title == "card 1"
    documents, versions, objects, uploads = stored(runtime)
    assert (documents, versions, len(objects), uploads) == (1, 1, 1, 1)


def test_a_corrected_version_with_a_missing_spool_dir_is_503(
    app: Flask, runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, _ = helpers.upload_pdf(runtime, cast, cast.child)
    client = signed_in(app, cast.registrar.email)
    break_spool_dir(runtime, "missing", monkeypatch)
    boundary, body = encode_multipart(
        {
            "csrf_token": helpers.csrf(client),
            "file": FileStorage(io.BytesIO(large_scan(9 * MIB)), filename="corrected.tif"),
        }
    )
    response = client.post(
        f"/registrar/documents/{info.id}/versions",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert response.status_code == 503
    assert "temporary space for large uploads failed (No such file or directory)" in (
        response.get_data(as_text=True)
    )
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert len(document.versions) == 1


def spool_line(runtime: Runtime) -> tuple[bool, str]:
    [result] = [r for r in run_checks(runtime) if r.name == "upload spool"]
    return result.ok, result.detail


def test_doctor_checks_the_spool_dir(runtime: Runtime) -> None:
    spool_dir = runtime.settings.data_dir / "tmp"
    assert spool_line(runtime) == (True, f"{spool_dir} (encrypted write, read back)")
    assert list(spool_dir.iterdir()) == []  # the probe leaves nothing behind


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("missing", "No such file or directory (ENOENT)"),
        ("a file", "Not a directory (ENOTDIR)"),
        ("full", "No space left on device (ENOSPC)"),
    ],
)
def test_doctor_fails_naming_a_broken_spool_dir(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, how: str, reason: str
) -> None:
    spool_dir, _ = break_spool_dir(runtime, how, monkeypatch, room=0)
    ok, detail = spool_line(runtime)
    assert not ok
    assert detail.startswith(f"upload spool directory {spool_dir}: ")
    assert detail.endswith(reason)
    # The other checks are unaffected.
    assert all(r.ok for r in run_checks(runtime) if r.name != "upload spool")


def test_a_spool_failure_is_a_storage_unavailable_and_a_503() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    error = SpoolUnavailable(Path("/srv/satchel/tmp"), "cannot write to its spill file", full)
    assert isinstance(error, StorageUnavailable) and status_for(error) == 503
    assert str(error) == (
        "upload spool directory /srv/satchel/tmp: cannot write to its spill file: "
        "No space left on device (ENOSPC)"
    )
