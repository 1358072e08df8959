"""Load: concurrent uploads, guardian downloads, grants and revokes against ``satchel serve``
(gunicorn, three workers) on PostgreSQL and SeaweedFS.

Every client is a thread with its own session, logged in through the form like a browser.
The run lasts ``SATCHEL_TEST_LOAD_SECONDS`` (60 by default). Afterwards: no answer was a
5xx and no request failed in transport; the audit log holds exactly one event of each kind
per successful operation, and the very ones (titles of uploads, ids of grants and revokes,
guardian and document of each download); ``satchel audit verify`` and ``satchel fsck
--deep`` pass.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from config import Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.categories import Category
from folders.models import GrantScope, Relationship, Role
from folders.runtime import Runtime
from tests.support import samples
from tests.support.s3 import S3Service
from tests.support.serve import SATCHEL, clean_environment, serving

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.postgres]

PASSWORD = "load test passphrase"
WORKERS = 3
UPLOADERS = 2
DOWNLOADERS = 3
SHARERS = 2
COOKIE = "satchel_session"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_DOWNLOAD = re.compile(r'href="/guardian/documents/([0-9a-f-]{36})/download"')


def load_seconds() -> float:
    return float(os.environ.get("SATCHEL_TEST_LOAD_SECONDS", "60"))


class TransportError(Exception):
    """A request that got no HTTP answer at all (reset, refused, timed out)."""


class Session:
    """One browser-like client: its own cookie and CSRF token, a new connection per request
    (gunicorn's sync workers close each connection after the answer)."""

    def __init__(self, base: str, tally: Tally) -> None:
        parts = urllib.parse.urlsplit(base)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._cookie = ""
        self._tally = tally
        self.csrf = ""

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Cookie": self._cookie} if self._cookie else {}
        if content_type:
            headers["Content-Type"] = content_type
        connection = http.client.HTTPConnection(self._host, self._port, timeout=120)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            self._tally.transport(f"{method} {path}: {type(e).__name__}: {e}")
            raise TransportError(str(e)) from e
        finally:
            connection.close()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith(f"{COOKIE}="):
                self._cookie = value.split(";", 1)[0]
        self._tally.status(response.status, f"{method} {path}")
        page = data.decode("utf-8", "replace")
        if "text/html" in (response.getheader("Content-Type") or ""):
            found = _CSRF.search(page)
            if found:
                self.csrf = found.group(1)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def form(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        body = urllib.parse.urlencode({**fields, "csrf_token": self.csrf}).encode()
        return self.request("POST", path, body, "application/x-www-form-urlencoded")

    def multipart(
        self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]
    ) -> tuple[int, dict[str, str], bytes]:
        boundary = uuid.uuid4().hex
        out = io.BytesIO()
        for name, value in {**fields, "csrf_token": self.csrf}.items():
            out.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, (filename, data) in files.items():
            out.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        out.write(f"--{boundary}--\r\n".encode())
        return self.request(
            "POST", path, out.getvalue(), f"multipart/form-data; boundary={boundary}"
        )

    def log_in(self, email: str) -> None:
        self.request("GET", "/login")
        status, headers, _ = self.form("/login", {"email": email, "password": PASSWORD})
        assert status == 302, f"login of {email} answered {status}"
        self.request("GET", headers["location"])  # the home page, for a fresh CSRF token


@dataclass
class Tally:
    """What every client did, shared by all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    uploaded_titles: list[str] = field(default_factory=list)
    downloads: Counter[tuple[str, str]] = field(default_factory=Counter)
    granted: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def status(self, status: int, what: str) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status >= 500:
                self.server_errors.append(f"{status} {what}")

    def transport(self, what: str) -> None:
        with self.lock:
            self.transport_errors.append(what)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


@dataclass(frozen=True)
class LoadCast:
    uploaders: list[tuple[str, list[uuid.UUID]]]  # registrar email, students to upload to
    downloaders: list[str]  # guardian emails with a folder grant on an upload student
    sharers: list[tuple[str, uuid.UUID, str]]  # registrar email, student, guardian email


def _prepare(runtime: Runtime) -> LoadCast:
    """Accounts, students, links, standing grants and a few documents, via the services."""
    operator = Actor.operator()
    admin_email = "load-admin@school.example"
    runtime.accounts.add_user(operator, admin_email, Role.ADMIN, password=PASSWORD)

    def account(email: str, role: Role) -> Actor:
        runtime.accounts.add_user(operator, email, role, password=PASSWORD)
        return runtime.accounts.acting_as(email)

    setup = account("load-setup@school.example", Role.REGISTRAR)
    upload_students = []
    downloaders = []
    for n in range(DOWNLOADERS):
        student = runtime.students.add_student(setup, f"L-D{n}", f"Dana{n}", "Load")
        guardian = account(f"reader{n}@home.example", Role.GUARDIAN)
        runtime.students.link_guardian(setup, student.id, guardian.email, Relationship.PARENT)
        runtime.grants.grant(setup, guardian.email, student.id, GrantScope.FOLDER)
        runtime.documents.upload(
            setup,
            student.id,
            io.BytesIO(samples.make_pdf(pages=2, text=f"Seed of {n}")),
            "seed.pdf",
            category=Category.REPORT_CARD,
            title=f"Seed {n}",
        )
        upload_students.append(student.id)
        downloaders.append(guardian.email)
    uploaders = [
        (account(f"uploader{n}@school.example", Role.REGISTRAR).email, upload_students)
        for n in range(UPLOADERS)
    ]
    sharers = []
    for n in range(SHARERS):
        registrar = account(f"sharer{n}@school.example", Role.REGISTRAR)
        student = runtime.students.add_student(setup, f"L-S{n}", f"Sam{n}", "Load")
        guardian = account(f"sharee{n}@home.example", Role.GUARDIAN)
        runtime.students.link_guardian(setup, student.id, guardian.email, Relationship.GUARDIAN)
        runtime.documents.upload(
            setup,
            student.id,
            io.BytesIO(samples.make_pdf(pages=1)),
            "shared.pdf",
            category=Category.HEALTH,
            title=f"Shared {n}",
        )
        sharers.append((registrar.email, student.id, guardian.email))
    return LoadCast(uploaders, downloaders, sharers)


def _uploader(
    base: str, tally: Tally, email: str, students: list[uuid.UUID], stop: float, n: int
) -> None:
    session = Session(base, tally)
    session.log_in(email)
    turn = 0
    while time.monotonic() < stop:
        student = students[turn % len(students)]
        title = f"Load {n}-{turn} {uuid.uuid4().hex[:8]}"
        turn += 1
        data = samples.make_pdf(pages=1 + turn % 3, text=title)
        status, _, body = session.multipart(
            f"/registrar/students/{student}/upload",
            {"form": "single", "title": title, "category": "progress_report", "school_year": ""},
            {"files": ("load.pdf", data)},
        )
        if status == 200 and b"1 file was stored" in body:
            with tally.lock:
                tally.uploaded_titles.append(title)
        else:
            tally.fail(f"upload {title}: {status}")


def _downloader(base: str, tally: Tally, email: str, stop: float) -> None:
    session = Session(base, tally)
    session.log_in(email)
    turn = 0
    while time.monotonic() < stop:
        status, _, home = session.request("GET", "/guardian/")
        documents = sorted(set(_DOWNLOAD.findall(home.decode())))
        if status != 200 or not documents:
            tally.fail(f"guardian home of {email}: {status}, {len(documents)} documents")
            continue
        for document in (documents[turn % len(documents)], documents[0]):
            status, headers, body = session.request(
                "GET", f"/guardian/documents/{document}/download"
            )
            good = (
                status == 200
                and body.startswith(b"%PDF-")
                and int(headers.get("content-length", "-1")) == len(body)
            )
            if good:
                with tally.lock:
                    tally.downloads[(email, document)] += 1
            else:
                tally.fail(f"download {document} by {email}: {status}")
        turn += 1


def _active_grants(session: Session, student: uuid.UUID) -> set[str]:
    status, _, page = session.request("GET", f"/registrar/students/{student}/sharing")
    assert status == 200
    pattern = rf"/registrar/students/{student}/grants/([0-9a-f-]{{36}})/revoke"
    return set(re.findall(pattern, page.decode()))


def _sharer(
    base: str, tally: Tally, email: str, student: uuid.UUID, guardian: str, stop: float
) -> None:
    session = Session(base, tally)
    session.log_in(email)
    scopes = [
        {"scope": "folder"},
        {"scope": "category", "category": "health"},
        {"scope": "category", "category": "progress_report"},
    ]
    turn = 0
    while time.monotonic() < stop:
        before = _active_grants(session, student)
        fields = {"guardian": guardian, "reason": f"load {turn}", **scopes[turn % len(scopes)]}
        turn += 1
        status, _, _ = session.form(f"/registrar/students/{student}/grants", fields)
        if status != 302:
            tally.fail(f"grant by {email}: {status}")
            continue
        new = _active_grants(session, student) - before
        if len(new) != 1:
            tally.fail(f"grant by {email}: {len(new)} new grants on the page")
            continue
        [grant] = new
        with tally.lock:
            tally.granted.append(grant)
        status, _, _ = session.form(
            f"/registrar/students/{student}/grants/{grant}/revoke", {"reason": f"load {turn}"}
        )
        if status == 302:
            with tally.lock:
                tally.revoked.append(grant)
        else:
            tally.fail(f"revoke {grant}: {status}")


def _worker(target: Callable[..., None], tally: Tally, *args: object) -> threading.Thread:
    def run() -> None:
        try:
            target(*args)
        except TransportError:
            pass  # already counted
        except Exception as e:  # a failed assertion in a thread must not vanish
            tally.fail(f"{target.__name__}: {type(e).__name__}: {e}")

    return threading.Thread(target=run, name=target.__name__, daemon=True)


def satchel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SATCHEL, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _audit_entries(env: dict[str, str], out: Path) -> list[dict[str, object]]:
    result = satchel(env, "audit", "export", "--format", "jsonl", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_bytes().splitlines()]


def test_concurrent_clients_on_gunicorn_postgresql_and_seaweedfs(
    tmp_path: Path,
    postgres_database_url: str,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
) -> None:
    env = clean_environment() | {
        "SATCHEL_DATA_DIR": str(tmp_path / "var"),
        "SATCHEL_DATABASE_URL": postgres_database_url,
        "SATCHEL_STORAGE_BACKEND": "s3",
        "SATCHEL_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "SATCHEL_S3_BUCKET": s3_bucket,
        "SATCHEL_S3_PREFIX": s3_prefix,
        "SATCHEL_S3_REGION": s3_server.region,
        "SATCHEL_S3_ACCESS_KEY_ID": s3_server.access_key,
        "SATCHEL_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "SATCHEL_WORKERS": str(WORKERS),
        "SATCHEL_SECURE_COOKIES": "false",  # plain HTTP on loopback
    }
    runtime = Runtime(
        Settings.load(env, cwd=tmp_path),
        # Cheap Argon2id hashes: the server verifies with the parameters stored in them.
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    try:
        initialize(runtime)
        cast = _prepare(runtime)
    finally:
        runtime.close()
    # Events up to here (the set-up, and this export's own event) are not the load's.
    last_before = max(int(str(e["seq"])) for e in _audit_entries(env, tmp_path / "before.jsonl"))

    tally = Tally()
    with serving(env, tmp_path / "serve.log", workers=WORKERS) as base:
        stop = time.monotonic() + load_seconds()
        threads = [
            *(
                _worker(_uploader, tally, base, tally, email, students, stop, n)
                for n, (email, students) in enumerate(cast.uploaders)
            ),
            *(_worker(_downloader, tally, base, tally, email, stop) for email in cast.downloaders),
            *(
                _worker(_sharer, tally, base, tally, email, student, guardian, stop)
                for email, student, guardian in cast.sharers
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=load_seconds() + 300)
        assert not any(t.is_alive() for t in threads), "a client hung"

    print(  # shown with -s, and on failure
        f"{load_seconds():.0f} s: {len(tally.uploaded_titles)} uploads, "
        f"{sum(tally.downloads.values())} downloads, {len(tally.granted)} grants, "
        f"{len(tally.revoked)} revokes; answers {dict(sorted(tally.statuses.items()))}"
    )
    assert tally.server_errors == [], tally.server_errors[:20]
    assert tally.transport_errors == [], tally.transport_errors[:20]
    assert tally.failures == [], tally.failures[:20]
    # The run did real work of every kind (a few per second on a small machine).
    assert tally.uploaded_titles and tally.downloads and tally.granted and tally.revoked
    assert len(tally.granted) == len(set(tally.granted)) == len(tally.revoked)

    entries = _audit_entries(env, tmp_path / "after.jsonl")
    new = [e for e in entries if int(str(e["seq"])) > last_before]
    allowed = [e for e in new if e["outcome"] == "allowed"]

    def of(action: str) -> list[dict[str, object]]:
        return [e for e in allowed if e["action"] == action]

    # Exactly one event per successful operation, and the very one.
    uploads = Counter(str(e["detail"]) for e in of("document.upload"))
    assert uploads == Counter(f"progress_report: {t}" for t in tally.uploaded_titles)
    downloads = Counter(
        (str(e["actor_email"]), str(e["document_id"])) for e in of("document.download")
    )
    assert downloads == tally.downloads
    assert Counter(str(e["grant_id"]) for e in of("grant.create")) == Counter(tally.granted)
    assert Counter(str(e["grant_id"]) for e in of("grant.revoke")) == Counter(tally.revoked)
    # Nothing failed or was refused along the way.
    problems = [e for e in new if e["outcome"] != "allowed"]
    assert problems == [], problems[:5]

    verified = satchel(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fsck = satchel(env, "fsck", "--deep")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
