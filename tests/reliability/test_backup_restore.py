"""The backup and restore drill of docs/operations.md, on PostgreSQL and SeaweedFS.

Instance A holds documents (versions, a rotation, a crypto-shredded version) and audit
events. It is backed up while it keeps working, in the documented order: the key files,
the audit checkpoints, ``pg_dump``, then the document objects (copied to a second bucket
with the minio client). A fresh instance B is restored from those alone: every document
decrypts byte for byte, `satchel audit verify` exits 0 and `satchel fsck --deep` finds
the one upload made after the dump as an orphan, which `--repair` removes.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result
from minio import Minio
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.events import Action
from config import Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.categories import Category
from folders.documents import DocumentInfo
from folders.models import DocumentVersion, GrantScope, Role
from folders.runtime import Runtime
from tests.support import samples
from tests.support.app import settings_on_s3
from tests.support.db import PostgresServer
from tests.support.people import make_actor
from tests.support.postgres import libpq_url
from tests.support.required import missing_service
from tests.support.s3 import S3Service
from web.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.postgres]

OPERATOR = Actor.operator()
CHECKPOINTS = "audit/"


def pg_tool(name: str) -> str:
    """The client tool of the newest installed PostgreSQL (pg_dump must not be older
    than the server)."""
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        missing_service("PostgreSQL client tools", f"{name} not found (Debian's postgresql)")
    return found


def environment(settings: Settings) -> dict[str, str]:
    """The SATCHEL_* variables of ``settings``, for the real `satchel` command."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    assert settings.s3_bucket and settings.s3_endpoint_url and settings.s3_secret_access_key
    return clean | {
        "SATCHEL_DATA_DIR": str(settings.data_dir),
        "SATCHEL_DATABASE_URL": settings.effective_database_url,
        "SATCHEL_STORAGE_BACKEND": "s3",
        "SATCHEL_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "SATCHEL_S3_BUCKET": settings.s3_bucket,
        "SATCHEL_S3_PREFIX": settings.s3_prefix,
        "SATCHEL_S3_REGION": settings.s3_region,
        "SATCHEL_S3_ACCESS_KEY_ID": settings.s3_access_key_id or "",
        "SATCHEL_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
    }


def satchel(settings: Settings, *args: str) -> Result:
    """A `satchel` command, in-process (a fresh Runtime from the environment)."""
    return CliRunner().invoke(cli, list(args), env=environment(settings))


def satchel_process(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """A `satchel` command as its own process, as an operator runs it."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("satchel")), *args],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_objects(
    client: Minio,
    source: tuple[str, str],
    target: tuple[str, str],
    *,
    only: str = "",
    exclude: str | None = None,
) -> int:
    """Copy the objects under ``source prefix + only`` (except those under ``source
    prefix + exclude``) to the same relative keys under the target prefix, through this
    machine, as a backup to another system would."""
    (source_bucket, source_prefix), (target_bucket, target_prefix) = source, target
    copied = 0
    for item in client.list_objects(source_bucket, prefix=source_prefix + only, recursive=True):
        name = str(item.object_name)
        if exclude is not None and name.startswith(source_prefix + exclude):
            continue
        response = client.get_object(source_bucket, name)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        relative = name[len(source_prefix) :]
        client.put_object(target_bucket, target_prefix + relative, io.BytesIO(data), len(data))
        copied += 1
    return copied


@pytest.fixture
def backup_bucket(minio_client: Minio) -> Iterator[str]:
    """A second bucket, standing for the backup system's."""
    bucket = f"satchel-backup-{uuid.uuid4().hex[:12]}"
    minio_client.make_bucket(bucket)
    yield bucket
    for item in minio_client.list_objects(bucket, recursive=True):
        minio_client.remove_object(bucket, str(item.object_name))
    minio_client.remove_bucket(bucket)


@pytest.fixture
def restored_database(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database (no schema) for instance B."""
    name = postgres_server.create_database()
    yield postgres_server.url_for(name)
    postgres_server.drop_database(name)


def test_backup_and_restore_drill(
    tmp_path: Path,
    postgres_database_url: str,
    restored_database: str,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
    backup_bucket: str,
    minio_client: Minio,
) -> None:
    settings_a = settings_on_s3(
        tmp_path / "a", postgres_database_url, s3_server, s3_bucket, s3_prefix
    )
    a = Runtime(settings_a, password_hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    initialize(a)
    backup = tmp_path / "backup"
    try:
        # Instance A at work -----------------------------------------------------------
        registrar = make_actor(a, "registrar@school.example", Role.REGISTRAR)
        parent = make_actor(a, "parent@home.example", Role.GUARDIAN)
        child = a.students.add_student(registrar, "S-1", "Lucia", "Lopez", grade="5")
        a.students.link_guardian(registrar, child.id, parent.email)
        originals: dict[uuid.UUID, bytes] = {}

        def upload(name: str, data: bytes, category: Category = Category.OTHER) -> DocumentInfo:
            info = a.documents.upload(
                registrar, child.id, io.BytesIO(data), name, category=category, title=name
            )
            originals[info.current.id] = data
            return info

        card = upload("card.pdf", samples.make_pdf(pages=2, text="Report card")).id
        upload("scan.tif", samples.make_tiff(pages=3), Category.HEALTH)
        corrected = samples.make_png(width=12, height=5)
        version = a.documents.upload_version(registrar, card, io.BytesIO(corrected), "card.png")
        originals[version.current.id] = corrected
        a.grants.grant(registrar, parent.email, child.id, GrantScope.FOLDER)
        assert b"".join(a.documents.open(parent, card).chunks) == corrected
        a.keys.rotate(OPERATOR)  # every data key rewrapped under keyring version 2
        shredded = upload("old.jpg", samples.make_jpeg(), Category.BEHAVIOR).current.id
        a.keys.shred_version(OPERATOR, shredded, "retention schedule")
        del originals[shredded]
        upload("plan.pdf", samples.make_pdf(text="504 plan"), Category.PLAN_504)

        # The backup, in the documented order, while A keeps working ---------------------
        # 1. The key files, separately (mode-preserving copy).
        shutil.copytree(settings_a.effective_keys_dir, backup / "keys")
        # 2. Seal the log, then copy the checkpoints: none can then claim more events
        #    than the dump that follows will hold.
        sealed = satchel(settings_a, "audit", "checkpoint")
        assert sealed.exit_code == 0, sealed.output
        assert copy_objects(
            minio_client, (s3_bucket, s3_prefix), (backup_bucket, "restored/"), only=CHECKPOINTS
        )
        # 3. The database: one consistent snapshot.
        dump = backup / "satchel.dump"
        subprocess.run(
            [
                pg_tool("pg_dump"),
                "--format=custom",
                "--file",
                str(dump),
                libpq_url(postgres_database_url),
            ],
            check=True,
            capture_output=True,
        )
        # Meanwhile A goes on: an upload the dump does not hold, and a newer checkpoint.
        late = upload("late.pdf", samples.make_pdf(text="after the dump")).current.id
        del originals[late]
        newer = a.audit_log.checkpoint()
        # 4. Every object except the checkpoints (taken in step 2): each object the dump
        #    references was stored before its row was committed, so it is in this copy.
        copy_objects(
            minio_client, (s3_bucket, s3_prefix), (backup_bucket, "restored/"), exclude=CHECKPOINTS
        )
    finally:
        a.close()

    # Restore into a fresh instance B ----------------------------------------------------
    settings_b = settings_a.replace(
        data_dir=tmp_path / "b",
        database_url=restored_database,
        s3_bucket=backup_bucket,
        s3_prefix="restored/",
    )
    settings_b.data_dir.mkdir(mode=0o700)
    shutil.copytree(backup / "keys", settings_b.effective_keys_dir)
    for path in settings_b.effective_keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    subprocess.run(
        [
            pg_tool("pg_restore"),
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            libpq_url(restored_database),
            str(dump),
        ],
        check=True,
        capture_output=True,
    )
    upgraded = satchel(settings_b, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output

    verified = satchel_process(settings_b, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK")

    b = Runtime(settings_b)
    try:
        with Session(b.engine) as session:
            rows = session.scalars(select(DocumentVersion)).all()
        readable = {row.id: row for row in rows if row.wrapped_dek is not None}
        assert set(readable) == set(originals)  # the late upload is not in the dump
        assert {row.id for row in rows} - set(readable) == {shredded}
        for version_id, data in originals.items():
            row = readable[version_id]
            opened = b.documents.open(OPERATOR, row.document_id, version_id=version_id)
            assert b"".join(opened.chunks) == data
        uploads = [e for e in b.audit_log.events() if e.event.action is Action.DOCUMENT_UPLOAD]
        assert len(uploads) == 4  # the trail came along, up to the dump
    finally:
        b.close()

    checked = satchel(settings_b, "fsck", "--deep", "--grace-hours", "0")
    assert checked.exit_code == 1, checked.output
    assert f"{len(originals)} objects authenticated" in checked.output
    assert checked.output.count("ORPHAN") == 1  # the object of the upload after the dump
    repaired = satchel(settings_b, "fsck", "--repair", "--grace-hours", "0", "--unsafe-short-grace")
    assert repaired.exit_code == 0, repaired.output
    assert satchel(settings_b, "fsck", "--deep").exit_code == 0

    # Why the checkpoints are copied before the dump: a checkpoint made after it vouches
    # for events the restored database cannot have.
    note = newer.note
    key = f"restored/audit/checkpoints/{newer.checkpoint.tree_size:020d}.note"
    minio_client.put_object(backup_bucket, key, io.BytesIO(note), len(note))
    refused = satchel(settings_b, "audit", "verify")
    assert refused.exit_code == 1
    assert f"FAIL  sequence {newer.checkpoint.tree_size}" in refused.output
