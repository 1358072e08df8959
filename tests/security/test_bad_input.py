"""Hostile and broken files through the registrar's upload form, over HTTP.

Each case names the file, its bytes, the status the form answers and the precise reason it
shows. A refused file leaves nothing behind: no document or version row, no object, no upload
event. Accepted odd file names are kept without their path and never become object keys.
"""

from __future__ import annotations

import html
import http.client
import io
import re
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from audit.events import Action
from config import Settings
from folders.models import Document, DocumentVersion
from folders.runtime import Runtime
from tests.support import samples
from tests.support.app import AuthActions, csrf_from
from tests.support.people import Cast
from tests.web.helpers import CAST_PASSWORD

LIMIT_MB = 1
LIMIT = LIMIT_MB * 1024 * 1024


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The test settings with a 1 MB upload limit, so oversized files stay small."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, max_upload_mb=LIMIT_MB)


@dataclass(frozen=True)
class Refused:
    """A file the form must refuse: the status and every fragment of the reason shown."""

    case: str
    make: Callable[[], bytes]
    filename: str
    status: int
    reason: tuple[str, ...]


_NOT_ALLOWED = "Only PDF, JPEG, PNG and TIFF files are accepted"
_SECOND_FORMAT = "files that hide a second format are not allowed"

REFUSED = [
    Refused("empty file", lambda: b"", "empty.pdf", 422, ("The file is empty.",)),
    Refused("zero-page PDF", samples.zero_page_pdf, "blank.pdf", 422, ("The PDF has no pages.",)),
    Refused(
        "truncated PDF",
        samples.truncated_pdf,
        "half.pdf",
        422,
        ("The PDF is damaged or incomplete and could not be read",),
    ),
    Refused(
        "JavaScript on open",
        samples.pdf_with_open_action_javascript,
        "open.pdf",
        422,
        ("The PDF contains JavaScript", "not allowed"),
    ),
    Refused(
        "document JavaScript",
        samples.pdf_with_document_javascript,
        "doc.pdf",
        422,
        ("The PDF contains JavaScript",),
    ),
    Refused(
        "page JavaScript",
        samples.pdf_with_page_javascript,
        "page.pdf",
        422,
        ("The PDF contains JavaScript",),
    ),
    Refused(
        "javascript: link",
        samples.pdf_with_javascript_uri,
        "link.pdf",
        422,
        ("The PDF contains JavaScript",),
    ),
    Refused(
        "hex-escaped JavaScript",
        samples.pdf_with_obfuscated_javascript,
        "hidden.pdf",
        422,
        ("The PDF contains JavaScript",),
    ),
    Refused(
        "Launch action",
        samples.pdf_with_launch_action,
        "launch.pdf",
        422,
        ("a Launch action that can start another program",),
    ),
    Refused(
        "embedded file",
        samples.pdf_with_embedded_file,
        "attached.pdf",
        422,
        ("The PDF contains an embedded file",),
    ),
    Refused(
        "file attachment annotation",
        samples.pdf_with_file_attachment_annotation,
        "annotated.pdf",
        422,
        ("The PDF contains an embedded file",),
    ),
    Refused("XFA form", samples.pdf_with_xfa, "form.pdf", 422, ("The PDF contains an XFA form",)),
    Refused(
        "encrypted PDF",
        samples.encrypted_pdf,
        "locked.pdf",
        422,
        ("The PDF is encrypted or password-protected",),
    ),
    Refused(
        "HTML named .pdf",
        samples.html_document,
        "report.pdf",
        422,
        ("HTML document", "(text/html)", _NOT_ALLOWED),
    ),
    Refused(
        "ZIP named .pdf",
        samples.zip_archive,
        "report.pdf",
        422,
        ("Zip archive", "(application/zip)", _NOT_ALLOWED),
    ),
    Refused("ELF named .pdf", samples.elf_executable, "report.pdf", 422, ("ELF", _NOT_ALLOWED)),
    Refused("PE named .pdf", samples.pe_executable, "report.pdf", 422, ("PE32+", _NOT_ALLOWED)),
    Refused(
        "JPEG named .png",
        samples.make_jpeg,
        "scan.png",
        422,
        ("a JPEG image (image/jpeg) but its name ends in .png", "must be named .jpeg or .jpg"),
    ),
    Refused(
        "PNG named .pdf",
        samples.make_png,
        "scan.pdf",
        422,
        ("a PNG image (image/png) but its name ends in .pdf",),
    ),
    Refused(
        "PDF with a ZIP appended",
        lambda: samples.make_pdf(pages=1) + samples.zip_archive(),
        "poly.pdf",
        422,
        ("extra data after the end of the PDF", "Zip archive", _SECOND_FORMAT),
    ),
    Refused(
        "PNG with a ZIP appended",
        lambda: samples.make_png() + samples.zip_archive(),
        "poly.png",
        422,
        ("extra data after the end of the PNG image", _SECOND_FORMAT),
    ),
    Refused(
        "JPEG with HTML appended",
        lambda: samples.make_jpeg() + samples.html_document(),
        "poly.jpg",
        422,
        ("extra data after the end of the JPEG image", "HTML document", _SECOND_FORMAT),
    ),
    Refused(
        "TIFF whose directories loop",
        samples.tiff_with_ifd_loop,
        "loop.tif",
        422,
        ("The TIFF image is damaged or incomplete", "loops back on itself"),
    ),
    Refused(
        "NUL in the name",
        lambda: samples.make_pdf(pages=1),
        "report\x00.pdf",
        422,
        ("The file name contains a control character (U+0000).",),
    ),
    Refused(
        "right-to-left override in the name",
        lambda: samples.make_pdf(pages=1),
        "invoice\u202efdp.pdf",
        422,
        ("text-direction override (U+202E)", "disguise its real extension"),
    ),
    Refused(
        "nothing but a path as the name",
        lambda: samples.make_pdf(pages=1),
        "../",
        422,
        ("The file name is empty.",),
    ),
    Refused(
        "one byte over the limit",
        lambda: samples.make_pdf(pages=1) + b" " * (LIMIT + 1 - len(samples.make_pdf(pages=1))),
        "big.pdf",
        413,
        (f"The file is larger than the limit of {LIMIT_MB} MB.",),
    ),
]


def _registrar(auth: AuthActions, cast: Cast) -> None:
    assert auth.login(cast.registrar.email, CAST_PASSWORD) == 302


def _upload(
    client: FlaskClient, student_id: uuid.UUID, data: bytes, filename: str
) -> tuple[int, str]:
    """Submit the single-file form; the status and the page."""
    url = f"/registrar/students/{student_id}/upload"
    token = csrf_from(client.get(url).get_data(as_text=True))
    fields = {
        "csrf_token": token,
        "form": "single",
        "title": "",
        "category": "report_card",
        "school_year": "2025-2026",
        "files": FileStorage(io.BytesIO(data), filename=filename),
    }
    # Encoded in memory: the test client would spill a large body to a temporary file
    # that nobody closes when the server refuses to read it.
    boundary, body = encode_multipart(fields)
    response = client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")
    return response.status_code, response.get_data(as_text=True)


def _rejected_reasons(page: str) -> list[str]:
    """The text of each item of the page's "not stored" list."""
    block = re.search(r'<div role="alert" class="rejected">(.*?)</div>', page, re.S)
    if block is None:
        return []
    items = re.findall(r"<li>(.*?)</li>", block.group(1), re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", item)) for item in items]


def _stored(runtime: Runtime) -> tuple[int, int, list[str], int]:
    """Document rows, version rows, object keys, and upload events."""
    with Session(runtime.engine) as session:
        documents = session.scalar(select(func.count()).select_from(Document)) or 0
        versions = session.scalar(select(func.count()).select_from(DocumentVersion)) or 0
    objects = [info.key for info in runtime.store.list("versions/")]
    uploads = runtime.audit_log.query(action=Action.DOCUMENT_UPLOAD, per_page=10).total
    return documents, versions, objects, uploads


@pytest.mark.parametrize("case", REFUSED, ids=[c.case for c in REFUSED])
def test_a_refused_file_gets_its_reason_and_leaves_nothing(
    client: FlaskClient, auth: AuthActions, runtime: Runtime, cast: Cast, case: Refused
) -> None:
    _registrar(auth, cast)
    status, page = _upload(client, cast.child.id, case.make(), case.filename)
    assert status == case.status, page
    [reason] = _rejected_reasons(page)
    for fragment in case.reason:
        assert fragment in reason, reason
    assert "1 file was not stored" in page and 'class="stored"' not in page
    assert _stored(runtime) == (0, 0, [], 0)


@dataclass(frozen=True)
class OddName:
    case: str
    filename: str
    kept: str


ODD_NAMES = [
    OddName("parent directories", "../../../etc/passwd.pdf", "passwd.pdf"),
    OddName("300 characters", "a" * 296 + ".pdf", "a" * 251 + ".pdf"),
    OddName("emoji", "🎒 Report card 📄.pdf", "🎒 Report card 📄.pdf"),
]


@pytest.mark.parametrize("case", ODD_NAMES, ids=[c.case for c in ODD_NAMES])
def test_an_odd_file_name_is_kept_without_its_path_and_never_used_as_a_key(
    client: FlaskClient, auth: AuthActions, runtime: Runtime, cast: Cast, case: OddName
) -> None:
    _registrar(auth, cast)
    status, page = _upload(client, cast.child.id, samples.make_pdf(pages=1), case.filename)
    assert status == 200, page
    assert _rejected_reasons(page) == []
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert document.current.filename == case.kept
    documents, versions, [key], uploads = _stored(runtime)
    assert (documents, versions, uploads) == (1, 1, 1)
    # SECURITY: the object key is generated; nothing of the client's name reaches it.
    assert re.fullmatch(r"versions/[0-9a-f-]{36}", key), key


def _session_over_http(base: str, email: str) -> tuple[str, str]:
    """Log the registrar in over real HTTP; the session cookie and its CSRF token."""
    host, port = base.removeprefix("http://").split(":")

    def exchange(method: str, path: str, body: str = "", cookie: str = "") -> tuple[int, str, str]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Cookie": cookie} if cookie else {}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        page = response.read().decode()
        set_cookie = response.getheader("Set-Cookie", "")
        connection.close()
        return response.status, page, set_cookie.split(";")[0] or cookie

    _, page, cookie = exchange("GET", "/login")
    form = urllib.parse.urlencode(
        {"email": email, "password": CAST_PASSWORD, "csrf_token": csrf_from(page)}
    )
    status, _, cookie = exchange("POST", "/login", form, cookie)
    assert status == 302
    _, page, cookie = exchange("GET", "/registrar/", cookie=cookie)
    return cookie, csrf_from(page)


def test_an_oversized_upload_is_refused_with_413_before_its_body_is_read(
    live_server: str, runtime: Runtime, cast: Cast
) -> None:
    cookie, token = _session_over_http(live_server, cast.registrar.email)
    host, port = live_server.removeprefix("http://").split(":")
    declared = 20 * LIMIT  # far over the limit, and far more than is ever sent
    sent_body = b"--x\r\n" + b"\0" * (64 * 1024)
    head = (
        f"POST /registrar/students/{cast.child.id}/upload HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Cookie: {cookie}\r\n"
        f"X-CSRF-Token: {token}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(head + sent_body)
        started = time.monotonic()
        answer = b""
        # The answer must come while the client still owes almost all of the body.
        while b"\r\n\r\n" not in answer:
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:500]
    assert waited < 5
    assert _stored(runtime) == (0, 0, [], 0)


def test_a_body_over_the_request_limit_is_413_through_the_form(
    client: FlaskClient, auth: AuthActions, runtime: Runtime, cast: Cast
) -> None:
    _registrar(auth, cast)
    # Over the file limit and the multipart allowance on top of it.
    data = samples.make_pdf(pages=1) + b" " * (LIMIT + 1024 * 1024 + 1)
    status, page = _upload(client, cast.child.id, data, "huge.pdf")
    assert status == 413
    assert "The upload is too large" in page
    assert f"larger than the limit of {LIMIT_MB} MB" in page and "nothing was stored" in page
    assert _stored(runtime) == (0, 0, [], 0)
