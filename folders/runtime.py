"""The composition root: long-lived collaborators built once from :class:`Settings`.

The web app factory and the ``satchel`` command line both build one ``Runtime`` and
hand its parts to services; nothing below reaches for globals. Parts are created on
first use, so ``satchel init`` can run before the key files exist.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property

from sqlalchemy import Engine

from audit.checkpoint import CheckpointSigner
from config import Settings, StorageBackend
from folders.accounts import Accounts
from folders.db import make_engine
from storage.keyring import Keyring
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore, make_s3_client


def utc_now() -> datetime:
    return datetime.now(UTC)


class Runtime:
    """Owns the engine, object store, keyring and audit signer for one process."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.clock = clock

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.effective_database_url)

    @cached_property
    def store(self) -> ObjectStore:
        return build_object_store(self.settings)

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring.load(self.settings.keyring_path)

    @cached_property
    def signer(self) -> CheckpointSigner:
        return CheckpointSigner.load(
            self.settings.signing_key_path, name=self.settings.audit_origin
        )

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.engine, self.clock)

    def close(self) -> None:
        """Release pooled connections (engine only; other parts hold no sockets open)."""
        if "engine" in self.__dict__:
            self.engine.dispose()


def build_object_store(settings: Settings, *, max_attempts: int = 3) -> ObjectStore:
    """The object store chosen by ``storage_backend``."""
    if settings.storage_backend is StorageBackend.LOCAL:
        return LocalObjectStore(settings.objects_dir)
    assert settings.s3_bucket is not None  # Settings validation guarantees it
    client = make_s3_client(
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
        max_attempts=max_attempts,
    )
    return S3ObjectStore(
        client,
        settings.s3_bucket,
        settings.s3_prefix,
        endpoint=settings.s3_endpoint_url or f"AWS S3 ({settings.s3_region})",
    )
