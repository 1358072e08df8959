"""Key operations over the stored versions: status, rotation (rewrap in SQL), retirement,
and crypto-shredding of one version. Objects in the store are never rewritten."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import event_for, require
from folders.db import hold_off_writers
from folders.errors import InvalidInput, NotFound
from folders.models import Document, DocumentVersion
from folders.policy import Permission
from folders.text import clean_text
from storage.envelope import ObjectIdentity
from storage.keyring import Keyring
from storage.objects import ObjectStore


@dataclass(frozen=True)
class KeyVersionStatus:
    version: int
    created_at: datetime
    active: bool
    retired: bool
    destroyed: bool
    data_keys: int  # document versions whose data key this version wraps


@dataclass(frozen=True)
class RewrapResult:
    active_version: int
    rewrapped: int
    remaining: int


class KeyManagement:
    """Admin and operator key operations; every one is audited."""

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        store: ObjectStore,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._keyring = keyring
        self._store = store
        self._audit = audit
        self._clock = clock

    def status(self, actor: Actor) -> list[KeyVersionStatus]:
        self._require(actor)
        with Session(self._engine) as session:
            counts: dict[int, int] = {
                version: count
                for version, count in session.execute(
                    select(DocumentVersion.key_version, func.count())
                    .where(DocumentVersion.wrapped_dek.is_not(None))
                    .group_by(DocumentVersion.key_version)
                )
            }
        return [
            KeyVersionStatus(
                version=info.version,
                created_at=info.created_at,
                active=info.active,
                retired=info.retired,
                destroyed=info.destroyed,
                data_keys=counts.get(info.version, 0),
            )
            for info in self._keyring.status()
        ]

    def rotate(
        self,
        actor: Actor,
        *,
        resume: bool = False,
        batch_size: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> RewrapResult:
        """Add a new keyring version (unless ``resume``) and rewrap every data key under it.

        Rewrapping commits in batches, so a crash loses at most one batch of work and
        ``rotate(resume=True)`` carries on. ``progress(done, total)`` is called per batch.
        If another process rotates again meanwhile, rewrapping follows the newer version.
        """
        self._require(actor)
        if not resume:
            info = self._keyring.rotate(now=self._clock())
            self._audit.record(
                event_for(actor, Action.KEY_ROTATE, detail=f"new key version {info.version}")
            )
        active = self._keyring.active_version
        total = self._stale_count(active)
        done = 0
        while True:
            # The keyring re-reads a key file another process changed, so a rotation made
            # meanwhile shows here: rewrap wraps under the newer version, and the target
            # must follow it or rows already moved would be picked up again forever.
            active = self._keyring.active_version
            with Session(self._engine) as session, session.begin():
                rows = session.scalars(
                    select(DocumentVersion)
                    .where(
                        DocumentVersion.key_version != active,
                        DocumentVersion.wrapped_dek.is_not(None),
                    )
                    .order_by(DocumentVersion.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    break
                for row in rows:
                    assert row.wrapped_dek is not None
                    context = ObjectIdentity(str(row.document_id), str(row.id)).encode()
                    fresh = self._keyring.rewrap(
                        row.wrapped_dek, row.key_id, row.key_version, context
                    )
                    row.wrapped_dek = fresh.wrapped
                    row.key_id = fresh.key_id
                    row.key_version = fresh.key_version
                done += len(rows)
            if progress is not None:
                progress(done, total)
        self._audit.record(
            event_for(
                actor,
                Action.KEY_ROTATE,
                detail=f"rewrapped {done} data keys under version {active}",
            )
        )
        return RewrapResult(active, done, self._stale_count(active))

    def retire_below(self, actor: Actor, min_version: int) -> None:
        """Stop older keyring versions from decrypting; refused while they still wrap keys.

        The count and the retirement happen while no transaction writes document
        versions, so an upload whose data key was wrapped under an older version before
        a rotation either committed first and is counted, or finds its version retired
        before it commits and fails (``Documents``). Raises Forbidden, InvalidInput
        (keys still wrapped under those versions), KeyringError, AuditUnavailable.
        """
        self._require(actor)
        active = self._keyring.active_version
        if min_version > active:
            raise InvalidInput(
                f"Retiring the versions below {min_version} would retire the active "
                f"version {active}, which wraps the data keys of new uploads; nothing was "
                "changed. Run `satchel keys rotate` to make a new active version first."
            )
        with Session(self._engine) as session, session.begin():
            hold_off_writers(session, DocumentVersion.__tablename__)
            still = session.scalar(
                select(func.count())
                .select_from(DocumentVersion)
                .where(
                    DocumentVersion.key_version < min_version,
                    DocumentVersion.wrapped_dek.is_not(None),
                )
            )
            if still:
                raise InvalidInput(
                    f"{still} data keys are still wrapped under versions below {min_version}; "
                    "run `satchel keys rotate --resume` first."
                )
            self._keyring.retire_below(min_version)
        self._audit.record(
            event_for(actor, Action.KEY_RETIRE, detail=f"minimum decryption version {min_version}")
        )

    def destroy_retired(self, actor: Actor, reason: str) -> list[int]:
        """Erase the material of every retired keyring version for good; return the
        versions erased (none when every retired version is erased already).

        Every data key wrapped only under them, in this database or in any backup of it,
        can never be unwrapped again: that is how crypto-shredding reaches backups. The
        event is recorded first, so an erasure is never unrecorded. Raises Forbidden,
        InvalidInput (no reason, or a data key in SQL is still wrapped under a retired
        version, as after restoring an older database), AuditUnavailable, KeyringError.

        Only the versions checked here are erased, even if another process retires more
        meanwhile. No upload can add a row under a retired version meanwhile (see
        :meth:`retire_below`).
        """
        self._require(actor)
        why = clean_text(reason, "reason", max_length=500)
        doomed = [v.version for v in self._keyring.status() if v.retired and not v.destroyed]
        if not doomed:
            return []
        with Session(self._engine) as session:
            still = session.scalar(
                select(func.count())
                .select_from(DocumentVersion)
                .where(
                    DocumentVersion.key_version.in_(doomed),
                    DocumentVersion.wrapped_dek.is_not(None),
                )
            )
        if still:
            raise InvalidInput(
                f"{still} data keys in the database are still wrapped under retired versions; "
                "destroying them would lose those documents."
            )
        listed = ", ".join(str(v) for v in doomed)
        self._audit.record(
            event_for(actor, Action.KEY_DESTROY, detail=f"key versions {listed}: {why}")
        )
        return self._keyring.destroy_retired(doomed)

    def shred_version(self, actor: Actor, version_id: uuid.UUID, reason: str) -> None:
        """Crypto-shred one document version: destroy its data key, then its object.

        The metadata row stays (the audit trail refers to it); the content is gone for good.
        """
        self._require(actor)
        why = clean_text(reason, "reason", max_length=500)
        with Session(self._engine) as session, session.begin():
            version = session.get(DocumentVersion, version_id, with_for_update=True)
            if version is None or version.wrapped_dek is None:
                raise NotFound("No such version, or it is already destroyed.")
            document = session.get(Document, version.document_id)
            assert document is not None
            version.wrapped_dek = None
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.KEY_SHRED,
                    student_id=document.student_id,
                    document_id=document.id,
                    version_id=version.id,
                    detail=why,
                ),
            )
            object_key = version.object_key
        self._store.delete(object_key)

    def _stale_count(self, active: int) -> int:
        with Session(self._engine) as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(DocumentVersion)
                    .where(
                        DocumentVersion.key_version != active,
                        DocumentVersion.wrapped_dek.is_not(None),
                    )
                )
                or 0
            )

    def _require(self, actor: Actor) -> None:
        require(self._audit, actor, Permission.MANAGE_KEYS, self._clock())
