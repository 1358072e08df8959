"""``satchel init``: create what a new installation needs, never replacing what exists."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, inspect, select

from audit.checkpoint import CheckpointSigner
from config import Settings, StorageBackend
from folders.db import create_database_file, upgrade
from folders.errors import FoldersError
from folders.models import DocumentVersion
from folders.runtime import Runtime
from storage.keyring import Keyring


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


class UnsafeInit(FoldersError):
    """Initialising now would make existing records unreadable (e.g. a lost keyring)."""


def initialize(runtime: Runtime) -> InitReport:
    """Create the data directory, key files (mode 0600), object directory, the SQLite
    database file (if the database is SQLite) and the schema: the one place that
    creates an installation, which ``runtime`` then opens (it never creates one).

    Idempotent: existing key files are kept and pending migrations applied.
    Raises UnsafeInit when the database already holds document versions but the
    keyring file is missing, since a new keyring could never decrypt them.
    """
    settings = runtime.settings
    report = InitReport()
    _make_private_dir(settings.data_dir, report)
    _make_private_dir(settings.effective_keys_dir, report)
    _make_private_dir(settings.spool_dir, report)
    if settings.storage_backend is StorageBackend.LOCAL:
        _make_private_dir(settings.objects_dir, report)
    create_database_file(settings.effective_database_url)

    had_schema = _has_schema(runtime)
    upgrade(runtime.engine)
    (report.kept if had_schema else report.created).append(
        f"database schema ({_safe_url(settings)})"
    )

    if settings.keyring_path.exists():
        report.kept.append(f"keyring {settings.keyring_path}")
    else:
        versions = _count_versions(runtime)
        if versions:
            raise UnsafeInit(
                f"The keyring {settings.keyring_path} is missing but the database holds "
                f"{versions} encrypted document versions. Restore the key files from backup; "
                "a new keyring could not decrypt them."
            )
        Keyring.create(settings.keyring_path, now=runtime.clock())
        report.created.append(f"keyring {settings.keyring_path}")

    if settings.signing_key_path.exists():
        report.kept.append(f"audit signing key {settings.signing_key_path}")
    else:
        CheckpointSigner.create(settings.signing_key_path, name=settings.audit_origin)
        report.created.append(f"audit signing key {settings.signing_key_path}")

    if settings.secret_key is None:
        if settings.secret_key_path.exists():
            report.kept.append(f"session secret {settings.secret_key_path}")
        else:
            write_private_file(settings.secret_key_path, secrets.token_urlsafe(48).encode())
            report.created.append(f"session secret {settings.secret_key_path}")
    return report


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically create ``path`` with mode 0600 (temp file + rename); refuse to overwrite."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(temp, path)  # fails if path appeared meanwhile: never overwrite a key
    finally:
        temp.unlink(missing_ok=True)


def _make_private_dir(path: Path, report: InitReport) -> None:
    if path.is_dir():
        report.kept.append(f"directory {path}")
        return
    path.mkdir(mode=0o700, parents=True)
    report.created.append(f"directory {path}")


def _has_schema(runtime: Runtime) -> bool:
    return inspect(runtime.engine).has_table("alembic_version")


def _count_versions(runtime: Runtime) -> int:
    from sqlalchemy.orm import Session

    with Session(runtime.engine) as session:
        return session.scalar(select(func.count()).select_from(DocumentVersion)) or 0


def _safe_url(settings: Settings) -> str:
    return settings.describe()["database_url"]
