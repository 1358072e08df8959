"""``satchel fsck``: reconcile the object store with the metadata database.

Every document version row names one object (``versions/<uuid>``) and its sealed size.
:meth:`Fsck.check` lists the store and walks the rows to find:

- **missing objects**: a row whose object is not in the store (the document cannot be
  opened; restore the object from a backup);
- **size mismatches**: an object whose size differs from the size recorded when it was
  stored (truncated or replaced);
- with ``deep=True``, **corrupt objects** and **unusable keys**: every object is opened
  the way a download opens it (data key unwrapped by the keyring, every segment
  authenticated) and its plaintext hashed against the SHA-256 recorded at upload;
- **leftovers of crypto-shredding**: the object of a shredded version still stored;
- **orphan objects**: objects under ``versions/`` that no row references, left by a
  crash between an object's put and its row's commit (``docs/architecture.md``), and
  **stale ingest intents**, rows of ``ingest_intents`` left by an interrupted bulk
  ingest (``docs/bulk-ingest.md``), reported as ``ingest-intents/<object key>``.

An unreferenced object or intent younger than the grace period is reported as
*pending*, not as a problem: it is most likely an upload in progress, whose row is
about to be committed. :meth:`Fsck.repair` deletes only orphan objects and stale
intents older than the grace period (with the unreferenced object an intent names),
checks the database again right before each delete, and never touches a key that a
row references or the audit checkpoints. It holds the bulk-ingest lock while it
deletes, so no ``satchel ingest`` runs meanwhile, and it refuses a grace period below
:data:`MIN_REPAIR_GRACE` unless told that nothing else writes (``unsafe_short_grace``):
web uploads take no lock, and one whose commit lands between the database check and
the delete would be left a version without its object.

Both are audited: every check records one ``store.fsck`` event with its verdict, and
a repair records a ``store.repair`` event with what it is about to delete *before* the
first delete (so nothing leaves the store unrecorded) and another with what it did.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from audit.events import Action, Outcome
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import event_for, require
from folders.bulk import INTENT_PREFIX, IngestBusy, IngestIntents, IngestLock
from folders.errors import DatabaseUnavailable, InvalidInput
from folders.models import DocumentVersion
from folders.policy import Permission
from storage.envelope import ObjectIdentity
from storage.errors import IntegrityError, KeyringError, ObjectNotFound
from storage.ingest import SealedRef, Vault
from storage.objects import ObjectInfo, ObjectStore

VERSIONS_PREFIX = "versions/"
DEFAULT_GRACE = timedelta(hours=24)
#: The shortest grace period a repair accepts while Satchel may be running: far longer
#: than any upload takes between storing its object and committing its row.
MIN_REPAIR_GRACE = timedelta(hours=1)

_ROW_BATCH = 1000
_KEY_BATCH = 500


class FindingKind(StrEnum):
    """What fsck found. Values are stable: they appear in ``satchel fsck --json``."""

    MISSING_OBJECT = "missing_object"
    SIZE_MISMATCH = "size_mismatch"
    CORRUPT_OBJECT = "corrupt_object"
    KEY_UNAVAILABLE = "key_unavailable"
    SHREDDED_OBJECT = "shredded_object"
    ORPHAN_OBJECT = "orphan_object"
    STALE_INTENT = "stale_intent"
    PENDING = "pending"


# Findings that repair deletes (after checking again); everything else is left alone.
REPAIRABLE = frozenset({FindingKind.ORPHAN_OBJECT, FindingKind.STALE_INTENT})


@dataclass(frozen=True)
class Finding:
    """One discrepancy. ``key`` is the object key inside the store (for an ingest
    intent, ``ingest-intents/<object key>``); ``version_id``/``document_id`` name the
    row involved, if any."""

    kind: FindingKind
    key: str
    detail: str
    version_id: uuid.UUID | None = None
    document_id: uuid.UUID | None = None

    @property
    def is_problem(self) -> bool:
        return self.kind is not FindingKind.PENDING

    @property
    def repairable(self) -> bool:
        return self.kind in REPAIRABLE


@dataclass(frozen=True)
class FsckReport:
    """The outcome of one check.

    ``versions`` counts the version rows checked (``shredded`` of them crypto-shredded),
    ``objects`` the objects under ``versions/`` and ``intents`` the ingest intents
    read; ``authenticated`` counts the objects a deep check opened successfully.
    """

    checked_at: datetime
    deep: bool
    grace: timedelta
    versions: int
    shredded: int
    objects: int
    intents: int
    authenticated: int
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_problem)

    @property
    def repairable(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.repairable)

    @property
    def clean(self) -> bool:
        return not self.problems

    def count(self, kind: FindingKind) -> int:
        return sum(1 for f in self.findings if f.kind is kind)

    def remaining(self, repaired: RepairResult | None = None) -> tuple[Finding, ...]:
        """The problems still there: all of them, or after ``repaired`` those it did not
        delete (a finding the repair kept is still reported)."""
        if repaired is None:
            return self.problems
        fixed = set(repaired.deleted)
        return tuple(f for f in self.problems if not (f.repairable and f.key in fixed))


@dataclass(frozen=True)
class RepairResult:
    """What a repair did: the keys it deleted, and the repairable findings it left
    alone because, checked again, they were referenced by now or not old enough."""

    deleted: tuple[str, ...]
    kept: tuple[Finding, ...]


@dataclass(frozen=True)
class _Row:
    version_id: uuid.UUID
    document_id: uuid.UUID
    object_key: str
    size: int
    stored_size: int
    sha256: str
    wrapped_dek: bytes | None
    key_id: str
    key_version: int


class Fsck:
    """Checks and repairs the object store against the document version rows.

    ``store`` is listed and repaired; ``vault`` (over the same store) opens objects for
    a deep check; ``audit`` records every check and repair; ``ingest_lock`` (by default
    the database's, waiting 10 seconds) is held while a repair deletes. Only the
    operator and admins may run it (the keys permission): a deep check unwraps every
    data key, though no plaintext leaves this object.
    """

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        vault: Vault,
        audit: AuditLog,
        clock: Callable[[], datetime],
        *,
        ingest_lock: IngestLock | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._vault = vault
        self._audit = audit
        self._clock = clock
        self._intents = IngestIntents(engine)
        self._ingest_lock = ingest_lock or IngestLock(engine)

    def check(
        self,
        actor: Actor,
        *,
        deep: bool = False,
        grace: timedelta = DEFAULT_GRACE,
        progress: Callable[[int, int], None] | None = None,
    ) -> FsckReport:
        """Compare every version row with the store; see the module docstring.

        ``progress(done, total)`` is called after each row. The report is returned once
        its ``store.fsck`` event is recorded (outcome allowed when clean, error when
        problems were found; the detail counts the findings by kind). Raises Forbidden,
        DatabaseUnavailable, StorageUnavailable/StorageError when the store cannot be
        listed or read, and AuditUnavailable; integrity failures are reported, never
        raised.
        """
        self._require(actor)
        if grace < timedelta(0):
            raise ValueError("the grace period cannot be negative")
        now = self._clock()
        cutoff = now - grace
        # The store is listed before the rows are read, so an upload committed in
        # between looks "missing" (each missing object is looked up again), and one
        # listed but committed while the rows are read looks unreferenced (each such
        # key is looked up in the database again at the end).
        listed = {info.key: info for info in self._store.list(VERSIONS_PREFIX)}
        unreferenced = dict(listed)
        findings: list[Finding] = []
        versions = shredded = authenticated = 0
        with _database_errors():
            intents = self._intents.all()
            total = self._row_count()
            for row in self._rows():
                versions += 1
                info = unreferenced.pop(row.object_key, None)
                if row.wrapped_dek is None:
                    shredded += 1
                    if info is not None:
                        findings.append(_shredded(row))
                elif info is None:
                    missing = self._confirm_missing(row)
                    if missing is not None:
                        findings.append(missing)
                elif info.size != row.stored_size:
                    findings.append(_size_mismatch(row, info))
                elif deep:
                    problem = self._authenticate(row)
                    if problem is None:
                        authenticated += 1
                    else:
                        findings.append(problem)
                if progress is not None:
                    progress(versions, max(total, versions))
            referenced = self._referenced(unreferenced)
        for key, info in sorted(unreferenced.items()):
            if key not in referenced:
                findings.append(_unreferenced(info, cutoff))
        for object_key, created_at in sorted(intents):
            findings.append(_intent(object_key, created_at, cutoff))
        report = FsckReport(
            checked_at=now,
            deep=deep,
            grace=grace,
            versions=versions,
            shredded=shredded,
            objects=len(listed),
            intents=len(intents),
            authenticated=authenticated,
            findings=tuple(findings),
        )
        # A check changes nothing and releases no plaintext, so its event records the
        # verdict afterwards.
        outcome = Outcome.ALLOWED if report.clean else Outcome.ERROR
        self._audit.record(event_for(actor, Action.FSCK, outcome, detail=_check_summary(report)))
        return report

    def repair(
        self, actor: Actor, report: FsckReport, *, unsafe_short_grace: bool = False
    ) -> RepairResult:
        """Delete the orphan objects and stale ingest intents of ``report``.

        Each is checked again first: an object is deleted only if no row references
        it at that moment and it is still older than ``report.grace``; an intent goes
        last, after its unreferenced object. The bulk-ingest lock is held meanwhile.
        With something to repair, a ``store.repair`` event naming it is recorded before
        the first delete and one with what was deleted and kept after the last (outcome
        error if problems of ``report`` remain). ``unsafe_short_grace`` accepts a grace
        period below :data:`MIN_REPAIR_GRACE`: safe only while nothing else writes to
        the store (Satchel stopped, as during a restore).

        Raises Forbidden, ValueError for a key that is neither under ``versions/`` nor
        an ingest intent of one, InvalidInput for a grace period that is too short,
        IngestBusy (a bulk ingest holds the lock), AuditUnavailable (if the first event
        cannot be written) — in all these cases nothing is deleted — and
        DatabaseUnavailable and StorageError; what was deleted before a failure stays
        deleted, and running fsck again picks up the rest.
        """
        self._require(actor)
        if not report.repairable:
            return RepairResult((), ())
        for finding in report.repairable:
            _require_deletable(finding)
        if report.grace < MIN_REPAIR_GRACE and not unsafe_short_grace:
            raise InvalidInput(
                f"A repair needs a grace period of at least {_hours(MIN_REPAIR_GRACE)}, "
                f"not {_hours(report.grace)}: an upload in progress could lose its object."
            )
        try:
            # SECURITY: no bulk ingest puts or commits while objects are deleted, so an
            # intent it is about to settle (or a row it is about to commit) cannot lose
            # its object between the database check and the delete.
            with _database_errors(), self._ingest_lock.held():
                result = self._delete(actor, report)
        except IngestBusy:
            raise IngestBusy(
                "A `satchel ingest` is running against this database, so nothing was "
                "deleted; run `satchel fsck --repair` again when it ends."
            ) from None
        remaining = report.remaining(result)
        outcome = Outcome.ERROR if remaining else Outcome.ALLOWED
        self._audit.record(
            event_for(actor, Action.FSCK_REPAIR, outcome, detail=_repair_summary(result, remaining))
        )
        return result

    def _delete(self, actor: Actor, report: FsckReport) -> RepairResult:
        cutoff = self._clock() - report.grace
        # SECURITY: fail closed. The intent is committed before the first delete, so no
        # object leaves the store unrecorded; if it cannot be written, nothing is deleted.
        self._audit.record(event_for(actor, Action.FSCK_REPAIR, detail=_repair_intent(report)))
        deleted: list[str] = []
        kept: list[Finding] = []
        # Objects first, then intents: an intent is the record that its object may be an
        # orphan, so it must outlive the object (as in bulk ingest's own recovery).
        ordered = sorted(report.repairable, key=lambda f: f.kind is FindingKind.STALE_INTENT)
        with _database_errors():
            for finding in ordered:
                if finding.kind is FindingKind.ORPHAN_OBJECT:
                    removed = self._delete_orphan(finding.key, cutoff)
                else:
                    removed = self._settle_intent(finding.key, cutoff)
                if removed:
                    deleted.extend(removed)
                else:
                    kept.append(finding)
        return RepairResult(tuple(deleted), tuple(kept))

    # Checking ---------------------------------------------------------------------------

    def _rows(self) -> Iterator[_Row]:
        """Every version row in object-key order, a batch per short transaction, so a
        long deep check never holds one transaction (and its snapshot) open for hours."""
        query = (
            select(
                DocumentVersion.id,
                DocumentVersion.document_id,
                DocumentVersion.object_key,
                DocumentVersion.size,
                DocumentVersion.stored_size,
                DocumentVersion.plaintext_sha256,
                DocumentVersion.wrapped_dek,
                DocumentVersion.key_id,
                DocumentVersion.key_version,
            )
            .order_by(DocumentVersion.object_key)
            .limit(_ROW_BATCH)
        )
        after: str | None = None
        while True:
            page = query if after is None else query.where(DocumentVersion.object_key > after)
            with Session(self._engine) as session:
                batch = [_Row(*values) for values in session.execute(page)]
            yield from batch
            if len(batch) < _ROW_BATCH:
                return
            after = batch[-1].object_key

    def _row_count(self) -> int:
        with Session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(DocumentVersion)) or 0

    def _confirm_missing(self, row: _Row) -> Finding | None:
        """A missing-object finding, unless the object appeared (an upload committed
        after the listing) or the row was shredded meanwhile."""
        try:
            self._store.head(row.object_key)
            return None
        except ObjectNotFound:
            pass
        with Session(self._engine) as session:
            current = session.get(DocumentVersion, row.version_id)
            if current is None or current.wrapped_dek is None:
                return None
        return Finding(
            FindingKind.MISSING_OBJECT,
            row.object_key,
            "no object in the store: this version cannot be opened; restore the object "
            "from a backup of the bucket",
            row.version_id,
            row.document_id,
        )

    def _authenticate(self, row: _Row) -> Finding | None:
        """Open the object as a download would and compare the plaintext with the row."""
        assert row.wrapped_dek is not None
        ref = SealedRef(
            row.object_key,
            ObjectIdentity(str(row.document_id), str(row.version_id)),
            row.wrapped_dek,
            row.key_id,
            row.key_version,
        )
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in self._vault.open_file(ref):
                digest.update(chunk)
                size += len(chunk)
        except IntegrityError:
            return _corrupt(row, "fails authentication (tampered, truncated or swapped)")
        except KeyringError as e:
            return Finding(
                FindingKind.KEY_UNAVAILABLE,
                row.object_key,
                f"its data key cannot be unwrapped: {e}",
                row.version_id,
                row.document_id,
            )
        except ObjectNotFound:
            return self._confirm_missing(row)
        if size != row.size or digest.hexdigest() != row.sha256:
            return _corrupt(row, "decrypts, but not to the SHA-256 recorded at upload")
        return None

    def _referenced(self, candidates: Iterable[str]) -> set[str]:
        """Those of ``candidates`` that a version row references now."""
        keys = sorted(candidates)
        found: set[str] = set()
        with Session(self._engine) as session:
            for start in range(0, len(keys), _KEY_BATCH):
                batch = keys[start : start + _KEY_BATCH]
                found.update(
                    session.scalars(
                        select(DocumentVersion.object_key).where(
                            DocumentVersion.object_key.in_(batch)
                        )
                    )
                )
        return found

    # Repairing --------------------------------------------------------------------------

    def _delete_orphan(self, key: str, cutoff: datetime) -> list[str]:
        _require_prefix(key, VERSIONS_PREFIX)
        # SECURITY: the database is asked again right before the delete, so an upload
        # whose row was committed since the check is never destroyed.
        if self._referenced([key]):
            return []
        try:
            info = self._store.head(key)
        except ObjectNotFound:
            return []
        if info.last_modified > cutoff:
            return []
        self._store.delete(key)
        return [key]

    def _settle_intent(self, intent_key: str, cutoff: datetime) -> list[str]:
        _require_prefix(intent_key, INTENT_PREFIX)
        object_key = intent_key[len(INTENT_PREFIX) :]
        _require_prefix(object_key, VERSIONS_PREFIX)
        created_at = self._intents.created_at(object_key)
        if created_at is None or created_at > cutoff:
            return []
        deleted: list[str] = []
        if not self._referenced([object_key]):
            try:
                info = self._store.head(object_key)
            except ObjectNotFound:
                pass  # the upload never wrote its object
            else:
                if info.last_modified > cutoff:
                    return []
                self._store.delete(object_key)
                deleted.append(object_key)
        # The intent goes last: if the delete above failed, the next run tries again.
        self._intents.remove([object_key])
        deleted.append(intent_key)
        return deleted

    # Helpers ----------------------------------------------------------------------------

    def _require(self, actor: Actor) -> None:
        require(self._audit, actor, Permission.MANAGE_KEYS, self._clock())


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn a lost or refused database connection into :class:`DatabaseUnavailable`."""
    try:
        yield
    except DatabaseUnavailable.CAUSES as e:
        raise DatabaseUnavailable.from_cause(e) from e


def _require_deletable(finding: Finding) -> None:
    """Raise ValueError unless repair may delete what ``finding`` names."""
    if finding.kind is FindingKind.ORPHAN_OBJECT:
        _require_prefix(finding.key, VERSIONS_PREFIX)
    else:
        _require_prefix(finding.key, INTENT_PREFIX)
        _require_prefix(finding.key[len(INTENT_PREFIX) :], VERSIONS_PREFIX)


def _require_prefix(key: str, prefix: str) -> None:
    # SECURITY: repair deletes under these two prefixes only; never a checkpoint under
    # audit/, whatever a report passed in says.
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise ValueError(f"fsck does not delete {key!r}")


def _shredded(row: _Row) -> Finding:
    return Finding(
        FindingKind.SHREDDED_OBJECT,
        row.object_key,
        "the version was crypto-shredded but its object is still stored (unreadable: its "
        "data key is destroyed); delete it with an S3 or file tool",
        row.version_id,
        row.document_id,
    )


def _size_mismatch(row: _Row, info: ObjectInfo) -> Finding:
    return Finding(
        FindingKind.SIZE_MISMATCH,
        row.object_key,
        f"the object has {info.size} bytes, {row.stored_size} were stored: truncated or "
        "replaced; restore it from a backup of the bucket",
        row.version_id,
        row.document_id,
    )


def _corrupt(row: _Row, what: str) -> Finding:
    return Finding(
        FindingKind.CORRUPT_OBJECT,
        row.object_key,
        f"the object {what}; restore it from a backup of the bucket",
        row.version_id,
        row.document_id,
    )


def _unreferenced(info: ObjectInfo, cutoff: datetime) -> Finding:
    stamp = f"{info.last_modified:%Y-%m-%d %H:%M:%S} UTC"
    if info.last_modified > cutoff:
        return Finding(
            FindingKind.PENDING,
            info.key,
            f"no version references it yet (stored {stamp}): probably an upload in progress",
        )
    return Finding(
        FindingKind.ORPHAN_OBJECT,
        info.key,
        f"no version references it (stored {stamp}): left by an interrupted upload; "
        "--repair deletes it",
    )


def _intent(object_key: str, created_at: datetime, cutoff: datetime) -> Finding:
    stamp = f"{created_at:%Y-%m-%d %H:%M:%S} UTC"
    if created_at > cutoff:
        return Finding(
            FindingKind.PENDING,
            INTENT_PREFIX + object_key,
            f"bulk ingest intent (made {stamp}): probably a run in progress",
        )
    return Finding(
        FindingKind.STALE_INTENT,
        INTENT_PREFIX + object_key,
        f"bulk ingest intent left by an interrupted run (made {stamp}); the next "
        "`satchel ingest` or --repair settles it",
    )


# Audit details ----------------------------------------------------------------------------


def _by_kind(findings: Iterable[Finding]) -> str:
    """``missing_object 1, orphan_object 2``: counts in the order of :class:`FindingKind`."""
    counts = Counter(f.kind for f in findings)
    return ", ".join(f"{kind.value} {counts[kind]}" for kind in FindingKind if counts[kind])


def _hours(grace: timedelta) -> str:
    return f"{grace.total_seconds() / 3600:g} h"


def _check_summary(report: FsckReport) -> str:
    checked = (
        f"{'deep' if report.deep else 'shallow'} check, grace {_hours(report.grace)}: "
        f"{report.versions} versions ({report.shredded} shredded), {report.objects} "
        f"objects, {report.intents} ingest intents"
    )
    if report.deep:
        checked += f", {report.authenticated} authenticated"
    return f"{checked}; findings: {_by_kind(report.findings) or 'none'}"


def _repair_intent(report: FsckReport) -> str:
    return (
        f"deleting what is still unreferenced and older than {_hours(report.grace)}: "
        f"{_by_kind(report.repairable)}"
    )


def _repair_summary(result: RepairResult, remaining: tuple[Finding, ...]) -> str:
    intents = sum(1 for key in result.deleted if key.startswith(INTENT_PREFIX))
    return (
        f"deleted: objects {len(result.deleted) - intents}, ingest intents {intents}; "
        f"kept (referenced or too recent when checked again): {len(result.kept)}; "
        f"problems remaining: {_by_kind(remaining) or 'none'}"
    )
