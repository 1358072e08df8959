"""The composition root: long-lived collaborators built once from :class:`Settings`.

The web app factory and the ``satchel`` command line both build one ``Runtime`` and
hand its parts to services; nothing below reaches for globals. Parts are created on
first use, so ``satchel init`` can run before the key files exist.

A Runtime opens an existing installation and never creates one: a missing SQLite
database or local object store directory raises :class:`NotInstalled` instead of
being created empty (a mistyped data directory must leave nothing behind). Only
:func:`folders.bootstrap.initialize` (``satchel init``) creates them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from argon2 import PasswordHasher
from sqlalchemy import Engine

from audit.checkpoint import CheckpointSigner
from audit.log import AuditLog
from config import Settings, StorageBackend
from folders.accounts import Accounts
from folders.catalog import Catalog
from folders.db import make_engine, sqlite_file
from folders.disclosures import Disclosures
from folders.documents import Documents
from folders.errors import DatabaseUnavailable
from folders.forms import UploadForms
from folders.fsck import Fsck
from folders.grants import Grants
from folders.inbox import SharedInbox
from folders.keys import KeyManagement
from folders.onboarding import Onboarding
from folders.roster import RosterImport
from folders.students import Students
from folders.throttle import Logins, LoginThrottle
from folders.trail import AuditTrail
from storage.ingest import Vault
from storage.keyring import Keyring
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore, make_s3_client


def utc_now() -> datetime:
    return datetime.now(UTC)


class NotInstalled(DatabaseUnavailable):
    """No Satchel installation where the settings point: its SQLite database file or
    its local object store directory does not exist (``satchel init`` creates both).

    ``str()`` names the data directory and the missing path, for operators; the
    ``public_message`` names nothing. A DatabaseUnavailable, so the web answers 503.
    """

    public_message = "Satchel is not initialised: run `satchel init`."


class Runtime:
    """Owns the engine, object store, keyring and audit signer for one process."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
        *,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._password_hasher = password_hasher

    @cached_property
    def engine(self) -> Engine:
        """The database, opened and never created. Raises NotInstalled if its SQLite
        file does not exist (later connections fail if it is removed: never recreated)."""
        url = self.settings.effective_database_url
        self._require_installed("the database", sqlite_file(url))
        return make_engine(url)

    @cached_property
    def store(self) -> ObjectStore:
        """The object store. Raises NotInstalled if the local store's directory does not
        exist (an S3 bucket is not checked here: ``satchel doctor`` does)."""
        if self.settings.storage_backend is StorageBackend.LOCAL:
            self._require_installed("the object store", self.settings.objects_dir)
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
    def vault(self) -> Vault:
        return Vault(
            self.store,
            self.keyring,
            max_bytes=self.settings.max_upload_bytes,
            spool_dir=self.settings.spool_dir,
        )

    @cached_property
    def audit_log(self) -> AuditLog:
        return AuditLog(
            self.engine,
            self.signer,
            self.store,
            self.clock,
            origin=self.settings.audit_origin,
            retention_days=self.settings.audit_checkpoint_retention_days,
        )

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.engine, self.clock, self.audit_log, self._password_hasher)

    @cached_property
    def students(self) -> Students:
        return Students(self.engine, self.audit_log, self.clock)

    @cached_property
    def documents(self) -> Documents:
        return Documents(self.engine, self.audit_log, self.vault, self.clock)

    @cached_property
    def grants(self) -> Grants:
        return Grants(self.engine, self.audit_log, self.clock)

    @cached_property
    def roster(self) -> RosterImport:
        return RosterImport(self.engine, self.audit_log, self.clock)

    @cached_property
    def logins(self) -> Logins:
        return Logins(self.accounts, LoginThrottle(self.engine, self.clock), self.audit_log)

    @cached_property
    def onboarding(self) -> Onboarding:
        return Onboarding(self.engine, self.accounts, self.audit_log, self.clock)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.engine, self.audit_log, self.clock)

    @cached_property
    def upload_forms(self) -> UploadForms:
        return UploadForms(self.engine, self.clock)

    @cached_property
    def inbox(self) -> SharedInbox:
        return SharedInbox(self.engine, self.documents, self.clock)

    @cached_property
    def disclosures(self) -> Disclosures:
        return Disclosures(self.engine, self.audit_log, self.clock)

    @cached_property
    def trail(self) -> AuditTrail:
        return AuditTrail(self.audit_log, self.clock)

    @cached_property
    def fsck(self) -> Fsck:
        return Fsck(self.engine, self.store, self.vault, self.audit_log, self.clock)

    @cached_property
    def keys(self) -> KeyManagement:
        return KeyManagement(self.engine, self.keyring, self.store, self.audit_log, self.clock)

    def _require_installed(self, what: str, path: Path | None) -> None:
        """The one check that the installation is there: raise NotInstalled, naming
        ``what``, if ``path`` (None: nothing on disk to check) does not exist."""
        if path is not None and not path.exists():
            raise NotInstalled(
                f"no Satchel installation at {self.settings.data_dir}: {what} {path} does "
                "not exist (run `satchel init` to create one)"
            )

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
