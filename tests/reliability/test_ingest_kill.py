"""A bulk ingest killed with SIGKILL in the middle, then run again, stores every row
exactly once and leaves no orphan object: the real ``satchel`` command, PostgreSQL and
SeaweedFS, and the bucket counted by an independent client (minio)."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from config import Settings
from folders.actor import Actor
from folders.bulk import MANIFEST_COLUMNS, IngestIntents
from folders.db import make_engine
from folders.models import Document, DocumentVersion, Role
from folders.runtime import Runtime
from tests.support import samples
from tests.support.db import PostgresServer
from tests.support.s3 import S3Service

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.postgres]

FILES = 500
STUDENTS = 10
REGISTRAR = "registrar@district.example"
KILL_AFTER = 100  # versions committed before the run may be killed


@pytest.fixture
def database_url(postgres_server: PostgresServer, postgres_template: str) -> Iterator[str]:
    """A freshly migrated PostgreSQL database (this test needs PostgreSQL only)."""
    name = postgres_server.create_database(template=postgres_template)
    yield postgres_server.url_for(name)
    postgres_server.drop_database(name)


@pytest.fixture
def environment(
    tmp_path: Path, database_url: str, s3_server: S3Service, s3_bucket: str, s3_prefix: str
) -> dict[str, str]:
    """What the `satchel` subprocess is configured with: nothing but these variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    return clean | {
        "SATCHEL_DATA_DIR": str(tmp_path / "data"),
        "SATCHEL_DATABASE_URL": database_url,
        "SATCHEL_STORAGE_BACKEND": "s3",
        "SATCHEL_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "SATCHEL_S3_BUCKET": s3_bucket,
        "SATCHEL_S3_PREFIX": s3_prefix,
        "SATCHEL_S3_REGION": s3_server.region,
        "SATCHEL_S3_ACCESS_KEY_ID": s3_server.access_key,
        "SATCHEL_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


def satchel(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("satchel")), *args]


def write_batch(directory: Path, district_ids: list[str]) -> tuple[Path, list[str]]:
    """FILES small scans (PDFs and multi-page TIFFs) and their manifest; returns the
    manifest and the files' SHA-256 digests."""
    (directory / "scans").mkdir(parents=True)
    digests = []
    with (directory / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for i in range(FILES):
            if i % 5 == 4:
                name = f"scans/{i:04d}.tif"
                data = samples.make_tiff(pages=1 + i % 3, width=8 + i % 61, height=8 + i // 61)
            else:
                name = f"scans/{i:04d}.pdf"
                data = samples.make_pdf(pages=1, text=f"cumulative folder page {i}")
            (directory / name).write_bytes(data)
            digests.append(hashlib.sha256(data).hexdigest())
            writer.writerow(
                [
                    district_ids[i % STUDENTS],
                    "other",
                    f"Scanned page {i:04d}",
                    "2019-2020",
                    "",
                    name,
                ]
            )
    return directory / "manifest.csv", digests


def version_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(DocumentVersion.object_key)))


def bucket_keys(client: Minio, bucket: str, root: str, prefix: str) -> set[str]:
    """Keys under ``root + prefix`` in the bucket, relative to ``root`` (the store's prefix)."""
    return {
        str(item.object_name)[len(root) :]
        for item in client.list_objects(bucket, prefix=root + prefix, recursive=True)
    }


def test_ingest_killed_mid_run_then_rerun_stores_each_row_once_without_orphans(
    tmp_path: Path,
    environment: dict[str, str],
    database_url: str,
    minio_client: Minio,
    s3_bucket: str,
    s3_prefix: str,
) -> None:
    init = subprocess.run(
        satchel("init"), env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert init.returncode == 0, init.stderr
    runtime = Runtime(Settings.load(environment))
    try:
        runtime.accounts.add_user(Actor.operator(), REGISTRAR, Role.REGISTRAR)
        registrar = runtime.accounts.acting_as(REGISTRAR)
        district_ids = [
            runtime.students.add_student(
                registrar, f"D-{n:03d}", "Student", f"Number {n}"
            ).district_id
            for n in range(STUDENTS)
        ]
    finally:
        runtime.close()
    manifest, digests = write_batch(tmp_path / "batch", district_ids)
    command = satchel("ingest", str(manifest), "--as", REGISTRAR, "--workers", "4")
    engine = make_engine(database_url)

    def orphans() -> set[str]:
        return bucket_keys(minio_client, s3_bucket, s3_prefix, "versions/") - version_keys(engine)

    try:
        with (tmp_path / "first.out").open("wb") as out:
            first = subprocess.Popen(command, env=environment, stdout=out, stderr=out)
        try:
            # Freeze the run (SIGSTOP) to look at it; kill it only at a moment when an
            # object is in the bucket but its row is not committed yet, so the kill
            # really leaves an orphan behind.
            deadline = time.monotonic() + 90
            while True:
                assert first.poll() is None, "the ingest finished before it could be killed"
                assert time.monotonic() < deadline, "the ingest did not make progress"
                if len(version_keys(engine)) >= KILL_AFTER:
                    os.kill(first.pid, signal.SIGSTOP)
                    time.sleep(0.2)  # requests already sent complete on the servers
                    if orphans():
                        os.kill(first.pid, signal.SIGKILL)
                        break
                    os.kill(first.pid, signal.SIGCONT)
                time.sleep(0.02)
            assert first.wait(timeout=30) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()

        committed = len(version_keys(engine))
        left_behind = orphans()
        marked = {key for key, _ in IngestIntents(engine).all()}
        assert KILL_AFTER <= committed < FILES
        assert left_behind, "the kill left no orphan object"
        # Every orphan has its intent, which is how the next run finds it without
        # listing the bucket; some uploads with an intent never got as far as writing
        # an object.
        assert left_behind <= marked
        unfinished = marked - version_keys(engine)

        rerun = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=120, check=False
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        removed = f"{len(unfinished)} unfinished upload{'' if len(unfinished) == 1 else 's'}"
        assert f"removed {removed}" in rerun.stdout
        assert (
            f"{FILES - committed} stored, {committed} already stored, 0 rejected, 0 failed "
            f"of {FILES} rows" in rerun.stdout
        )

        with Session(engine) as session:
            versions = session.scalar(select(func.count()).select_from(DocumentVersion))
            documents = session.scalar(select(func.count(func.distinct(Document.ingest_key))))
            stored_digests = sorted(session.scalars(select(DocumentVersion.plaintext_sha256)))
        assert versions == documents == FILES
        assert stored_digests == sorted(digests)  # each file exactly once
        in_bucket = bucket_keys(minio_client, s3_bucket, s3_prefix, "versions/")
        assert len(in_bucket) == versions and in_bucket == version_keys(engine)
        assert IngestIntents(engine).all() == []
    finally:
        engine.dispose()
