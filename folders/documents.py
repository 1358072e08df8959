"""Documents and their versions: upload, correct, list, and open (policy → audit → bytes)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, BinaryIO

from sqlalchemy import (
    Engine,
    Insert,
    and_,
    bindparam,
    case,
    func,
    insert,
    inspect,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from audit.events import Action, Event, Outcome
from audit.log import AuditLog, Page, last_page
from folders.actor import Actor
from folders.auditing import denied, event_for, require, require_guardian
from folders.categories import Category
from folders.db import reading_session
from folders.errors import Conflict, Forbidden, InvalidInput, KeyRetiredDuringUpload, NotFound
from folders.links import guardian_links
from folders.models import (
    Base,
    Document,
    DocumentVersion,
    Grant,
    Guardianship,
    Role,
    Student,
)
from folders.policy import GrantFacts, GuardianLink, Permission, Resource, decide
from folders.text import clean_text
from storage.envelope import ObjectIdentity
from storage.errors import KeyVersionRetired, StorageError
from storage.ingest import SealedRef, Spool, StoredFile, Vault

_logger = logging.getLogger(__name__)

_SCHOOL_YEAR = re.compile(r"^(\d{4})-(\d{4})$")
OPEN_ACTIONS = (Action.DOCUMENT_VIEW, Action.DOCUMENT_PREVIEW, Action.DOCUMENT_DOWNLOAD)
# A folder's order: its categories in the vocabulary's order (report cards first, as the
# pages show them), newest first within one, so a page is a slice of what it displays.
_FOLDER_ORDER = (
    case({c: i for i, c in enumerate(Category)}, value=Document.category),
    Document.created_at.desc(),
    Document.id,
)

# The read of every open, built once: building a statement costs more than running it.
_DOCUMENT_AND_VERSIONS = (
    select(Document, DocumentVersion)
    .outerjoin(DocumentVersion, DocumentVersion.document_id == Document.id)
    .where(Document.id == bindparam("document_id"))
    .order_by(DocumentVersion.number.desc())
)
# For a guardian, the same with their link to the student and the grants that could
# cover the document: one row per version and grant (or link, or nothing), all outer
# joins, so the document comes back whatever the guardian may see.
_DOCUMENT_FOR_GUARDIAN = (
    select(Document, DocumentVersion, Guardianship, Grant)
    .outerjoin(DocumentVersion, DocumentVersion.document_id == Document.id)
    .outerjoin(
        Guardianship,
        and_(
            Guardianship.student_id == Document.student_id,
            Guardianship.guardian_id == bindparam("guardian_id"),
        ),
    )
    .outerjoin(
        Grant,
        and_(
            Grant.guardian_id == Guardianship.guardian_id,
            Grant.student_id == Guardianship.student_id,
            or_(Grant.document_id.is_(None), Grant.document_id == Document.id),
        ),
    )
    .where(Document.id == bindparam("document_id"))
    .order_by(DocumentVersion.number.desc())
)


def _insert_all_columns(model: type[Base], prefix: str) -> Insert:
    """An INSERT of every column of ``model``, each bound to ``prefix`` + its attribute."""
    return insert(model).values(
        {attr.columns[0]: bindparam(prefix + attr.key) for attr in inspect(model).column_attrs}
    )


def _column_values(row: Base, prefix: str) -> dict[str, Any]:
    """``row``'s column values, named as :func:`_insert_all_columns` binds them."""
    return {prefix + attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}


# A new document with its first version. On PostgreSQL both rows go in one statement
# (the document's INSERT in a WITH clause), a round trip fewer; SQLite takes the two.
_INSERT_DOCUMENT = _insert_all_columns(Document, "document_")
_INSERT_VERSION = _insert_all_columns(DocumentVersion, "version_")
_INSERT_DOCUMENT_AND_VERSION = _INSERT_VERSION.add_cte(_INSERT_DOCUMENT.cte("new_document"))

# The constraint that keeps version numbers unique within a document (the models'
# naming convention names it after its first column).
_VERSION_NUMBER_UNIQUE = "uq_document_versions_document_id"


@dataclass(frozen=True)
class VersionInfo:
    id: uuid.UUID
    number: int
    size: int
    sha256: str
    mime_type: str
    page_count: int
    filename: str
    uploaded_at: datetime
    uploaded_by: uuid.UUID
    shredded: bool


@dataclass(frozen=True)
class DocumentInfo:
    id: uuid.UUID
    student_id: uuid.UUID
    category: Category
    title: str
    school_year: str | None
    effective_date: date | None
    created_at: datetime
    versions: tuple[VersionInfo, ...]  # newest first

    @property
    def current(self) -> VersionInfo:
        return self.versions[0]


@dataclass(frozen=True)
class SharedDocument:
    """A document a guardian may see, with its current version only."""

    document: DocumentInfo
    student_name: str
    updated_at: datetime  # when the current version was uploaded


@dataclass(frozen=True)
class OpenedVersion:
    document: DocumentInfo
    version: VersionInfo
    chunks: Iterator[bytes]


def check_school_year(value: str | None) -> str | None:
    """``YYYY-YYYY`` with consecutive years, or None; InvalidInput otherwise."""
    if value is None or not value.strip():
        return None
    match = _SCHOOL_YEAR.match(value.strip())
    if not match or int(match.group(2)) != int(match.group(1)) + 1:
        raise InvalidInput(f"The school year must look like 2025-2026, not {value!r}.")
    return value.strip()


def parse_category(value: str | Category) -> Category:
    """The category named ``value``, in any case; InvalidInput for an unknown one."""
    try:
        return Category(value.strip().lower())
    except ValueError:
        choices = ", ".join(c.value for c in Category)
        raise InvalidInput(f"Unknown category {value!r}; use one of: {choices}.") from None


class Documents:
    """Use cases on documents. Every read is decided by the policy and audited first."""

    def __init__(
        self, engine: Engine, audit: AuditLog, vault: Vault, clock: Callable[[], datetime]
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._vault = vault
        self._clock = clock

    # Writing ----------------------------------------------------------------------------

    def upload(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        stream: BinaryIO | Spool,
        filename: str,
        *,
        category: Category | str,
        title: str,
        school_year: str | None = None,
        effective_date: date | None = None,
        ingest_key: str | None = None,
    ) -> DocumentInfo:
        """Store a new document with its first version.

        ``stream`` may be a vault's :class:`Spool` (bulk ingest spools and hashes each
        file first), which is stored without a second copy. ``ingest_key`` (bulk ingest,
        ``folders.bulk``) is recorded on the document in the same transaction; a key
        already recorded makes the database refuse the document (sqlalchemy's
        IntegrityError).

        Raises Forbidden (not a registrar, or an actor without an account), NotFound
        (student), InvalidInput (metadata), ContentRejected/UploadTooLarge (the file),
        StorageUnavailable or KeyringError (storing the object), KeyRetiredDuringUpload
        (``satchel keys retire`` ran while it was stored), AuditUnavailable, and
        sqlalchemy's errors (OperationalError when the database is unreachable).
        When it raises, the upload has normally left nothing: no row, no event, and the
        stored object (if any) deleted again. The object stays in two cases: the COMMIT
        may have succeeded unseen (its reply was lost), so the version exists, or may,
        when the database cannot be asked, and must keep its object; or deleting it
        failed (logged), leaving an orphan for ``satchel fsck --repair``. Either way
        the exception raised is the one that failed the upload.
        """
        self._require(actor, Permission.MANAGE_FOLDER)
        category = parse_category(category)
        cleaned_title = clean_text(title, "title", max_length=200)
        assert cleaned_title is not None  # required: an empty title raised
        school_year = check_school_year(school_year)
        _uploader(actor)  # refuses an actor without an account before anything is stored
        with reading_session(self._engine) as session:
            if session.get(Student, student_id) is None:
                raise NotFound("No such student.")
        document_id, version_id = uuid.uuid4(), uuid.uuid4()
        stored = self._store(stream, filename, document_id, version_id)
        try:
            info = self.add_stored(
                actor,
                student_id,
                stored,
                document_id,
                version_id,
                category=category,
                title=cleaned_title,
                school_year=school_year,
                effective_date=effective_date,
                ingest_key=ingest_key,
            )
        except BaseException:
            self._discard(stored.object_key)
            raise
        self._audit.maybe_checkpoint()
        return info

    def add_stored(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        stored: StoredFile,
        document_id: uuid.UUID,
        version_id: uuid.UUID,
        *,
        category: Category,
        title: str,
        school_year: str | None,
        effective_date: date | None,
        ingest_key: str | None = None,
    ) -> DocumentInfo:
        """Record a file the vault stored for ``document_id``/``version_id`` as a new
        document with its first version, and the upload event, in one transaction.

        The metadata must be valid already (``upload`` and the manifest parser check
        it). A data key wrapped under an older key version is wrapped again under the
        active one. Raises Forbidden (not a registrar), KeyRetiredDuringUpload,
        KeyringError, sqlalchemy's IntegrityError (the ingest key is recorded already,
        or there is no such student), AuditUnavailable, or another database error;
        nothing is recorded then, and the stored object is the caller's to discard.
        """
        self._require(actor, Permission.MANAGE_FOLDER)
        stored = self._under_active_key(stored, document_id, version_id)
        now = self._clock()
        document = Document(
            id=document_id,
            student_id=student_id,
            category=category,
            title=title,
            school_year=school_year,
            effective_date=effective_date,
            created_by=_uploader(actor),
            created_at=now,
            ingest_key=ingest_key,
        )
        version = self._version_row(actor, document_id, version_id, 1, stored)
        # Plain INSERTs, built once: the ORM's unit of work costs more than the rest.
        rows = _column_values(document, "document_") | _column_values(version, "version_")
        with Session(self._engine) as session, session.begin():
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                connection.execute(_INSERT_DOCUMENT_AND_VERSION, rows)
            else:
                connection.execute(_INSERT_DOCUMENT, rows)
                connection.execute(_INSERT_VERSION, rows)
            self._require_key_usable(stored)
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.DOCUMENT_UPLOAD,
                    student_id=student_id,
                    document_id=document_id,
                    version_id=version_id,
                    detail=f"{category.value}: {title}",
                ),
            )
        return document_info(document, [version])

    def upload_version(
        self, actor: Actor, document_id: uuid.UUID, stream: BinaryIO | Spool, filename: str
    ) -> DocumentInfo:
        """Store a corrected file as the document's next version; older versions stay.

        Concurrent corrections of one document are numbered one after the other: the
        transaction locks the document row (on SQLite, the database) before it reads
        the last number. Raises Forbidden, NotFound (document), ContentRejected/
        UploadTooLarge, StorageUnavailable or KeyringError, KeyRetiredDuringUpload,
        Conflict (the number was taken by another version all the same, which the lock
        should prevent), AuditUnavailable, and sqlalchemy's errors. What is stored when
        it raises is as for :meth:`upload`.
        """
        self._require(actor, Permission.MANAGE_FOLDER)
        with reading_session(self._engine) as session:
            if session.get(Document, document_id) is None:
                raise NotFound("No such document.")
        version_id = uuid.uuid4()
        stored = self._store(stream, filename, document_id, version_id)
        number: int | None = None
        try:
            stored = self._under_active_key(stored, document_id, version_id)
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                document = session.get(Document, document_id, with_for_update=True)
                assert document is not None
                number = (
                    session.scalar(
                        select(func.max(DocumentVersion.number)).where(
                            DocumentVersion.document_id == document_id
                        )
                    )
                    or 0
                ) + 1
                session.add(self._version_row(actor, document_id, version_id, number, stored))
                session.flush()
                self._require_key_usable(stored)
                self._audit.append(
                    session,
                    event_for(
                        actor,
                        Action.DOCUMENT_VERSION,
                        student_id=document.student_id,
                        document_id=document_id,
                        version_id=version_id,
                        detail=f"version {number}",
                    ),
                )
                info = document_info(document, self._versions(session, document_id))
        except BaseException as e:
            self._discard(stored.object_key)
            if isinstance(e, IntegrityError) and _is_version_number_clash(e):
                raise Conflict(
                    f"Another correction was saved as version {number} of this document at "
                    "the same moment, so this file was not stored. Reload the document and "
                    "upload it again if it is still needed."
                ) from e
            raise
        self._audit.maybe_checkpoint()
        return info

    # Reading ----------------------------------------------------------------------------

    def list_folder(self, actor: Actor, student_id: uuid.UUID) -> list[DocumentInfo]:
        """Every document of a student with all versions (staff), by category in the order
        of :class:`Category` and newest first within one; audited as a folder view.
        Raises Forbidden, NotFound."""
        return list(self.folder_page(actor, student_id, per_page=None).items)

    def folder_page(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        *,
        category: Category | None = None,
        page: int = 1,
        per_page: int | None = 50,
    ) -> Page[DocumentInfo]:
        """One page of a student's documents with all their versions (staff), in the
        order of :meth:`list_folder`, of one ``category`` if given; ``per_page`` is at
        most 500, and None gives them all on one page. A page past the last is the last.
        Audited as a folder view. Raises Forbidden, NotFound.
        """
        self._require(actor, Permission.LIST_FOLDER)
        with reading_session(self._engine) as session:
            if session.get(Student, student_id) is None:
                raise NotFound("No such student.")
            query = select(Document).where(Document.student_id == student_id)
            if category is not None:
                query = query.where(Document.category == category)
            query = query.order_by(*_FOLDER_ORDER)
            if per_page is None:
                documents = session.scalars(query).all()
                total, size, page = len(documents), max(1, len(documents)), 1
            else:
                count = select(func.count()).select_from(query.order_by(None).subquery())
                total = session.scalar(count) or 0
                size = min(max(1, per_page), 500)
                page = min(max(1, page), last_page(total, size))
                documents = session.scalars(query.offset((page - 1) * size).limit(size)).all()
            versions = self._versions_by_document(session, [d.id for d in documents])
            items = tuple(document_info(d, versions.get(d.id, [])) for d in documents)
        self._audit.record(event_for(actor, Action.FOLDER_VIEW, student_id=student_id))
        return Page(items, page, size, total)

    def shared_with(self, actor: Actor) -> list[SharedDocument]:
        """What a guardian may see now, newest first. Each item is confirmed by the policy."""
        guardian_id = require_guardian(self._audit, actor, "shared documents")
        now = self._clock()
        with reading_session(self._engine) as session:
            grants = session.scalars(
                select(Grant).where(Grant.guardian_id == guardian_id, Grant.revoked_at.is_(None))
            ).all()
            by_student: dict[uuid.UUID, list[Grant]] = {}
            for grant in grants:
                by_student.setdefault(grant.student_id, []).append(grant)
            links = guardian_links(session, guardian_id, by_student)
            candidates = session.scalars(
                select(Document).where(Document.student_id.in_(list(by_student)))
            ).all()
            versions = self._versions_by_document(session, [d.id for d in candidates])
            names = {
                s.id: f"{s.given_name} {s.family_name}"
                for s in session.scalars(select(Student).where(Student.id.in_(list(by_student))))
            }
            shared = []
            for document in candidates:
                resource = Resource(
                    student_id=document.student_id,
                    document_id=document.id,
                    category=document.category,
                    link=links.get(document.student_id),
                    grants=tuple(GrantFacts.of(g) for g in by_student[document.student_id]),
                )
                current = versions.get(document.id, [])[:1]
                if current and decide(actor, Permission.VIEW_DOCUMENT, resource, now).allowed:
                    info = document_info(document, current)
                    shared.append(
                        SharedDocument(info, names[document.student_id], current[0].uploaded_at)
                    )
        shared.sort(key=lambda s: s.updated_at, reverse=True)
        return shared

    def open(
        self,
        actor: Actor,
        document_id: uuid.UUID,
        *,
        version_id: uuid.UUID | None = None,
        action: Action = Action.DOCUMENT_DOWNLOAD,
        purpose: str | None = None,
    ) -> OpenedVersion:
        """Decide, authenticate, audit, then hand out the plaintext stream.

        Guardians get the current version only; staff may name any version and must
        give a purpose. The audit event is committed before the stream is returned.

        A missing document or version, and a refusal by the policy, are audited
        (``access.denied``) before they are raised. Raises:

        - NotFound: no such document or version (for a guardian, any version but the
          current one), or a guardian not permitted to see it: the same answer. Also a
          version destroyed under the retention schedule (not audited as a refusal).
        - Forbidden: a staff account whose role may not read contents (compliance,
          admin). Staff may know the document exists, so they are told no rather than
          "not found"; for a document that does not exist they get NotFound.
        - InvalidInput: staff gave no purpose. ValueError: ``action`` is not one of
          :data:`OPEN_ACTIONS` (a programming error).
        - storage's IntegrityError (the object failed authentication), ObjectNotFound
          (the object is missing), StorageUnavailable, KeyringError (its key version is
          unknown or retired): audited as an ``error`` outcome first.
        - AuditUnavailable: an event could not be recorded (nothing is handed out; it
          replaces the refusal or storage error it was recording).
        - sqlalchemy's errors (OperationalError when the database is unreachable).

        Iterating ``chunks`` of an object too large to keep in memory reads it a second
        time, and raises storage's IntegrityError or StorageError if it changed or
        became unreachable since it was authenticated.
        """
        if action not in OPEN_ACTIONS:
            raise ValueError(f"{action} is not a way to open a document")
        is_staff = actor.role is not Role.GUARDIAN
        reason = clean_text(purpose or "", "purpose", max_length=200, required=False)
        if is_staff and not actor.is_operator and reason is None:
            raise InvalidInput("Staff must give a purpose for opening a record.")
        now = self._clock()
        with reading_session(self._engine) as session:
            if is_staff or actor.user_id is None:
                document, versions = self._document_and_versions(session, document_id)
                resource = (
                    Resource(document.student_id, document.id, document.category)
                    if document is not None
                    else Resource()
                )
            else:
                document, versions, resource = self._document_for_guardian(
                    session, actor.user_id, document_id
                )
            version = (
                next((v for v in versions if v.id == version_id), None)
                if (version_id)
                else (versions[0] if versions else None)
            )
            if document is not None and not is_staff and version is not versions[0]:
                version = None  # SECURITY: guardians see the current version only
        decision = decide(actor, Permission.VIEW_DOCUMENT, resource, now)
        if document is None or version is None or not decision.allowed:
            if document is None:
                why = "no such document"
            elif not decision.allowed:
                why = decision.reason.value
            else:
                why = "no such version" if is_staff else "not the current version"
            self._audit.record(
                denied(
                    actor,
                    f"{action.value}: {why}",
                    student_id=document.student_id if document else None,
                    document_id=document_id,
                    version_id=version_id,
                )
            )
            if is_staff and document is not None and not decision.allowed:
                raise Forbidden()
            raise NotFound()
        if version.wrapped_dek is None:
            raise NotFound("This version was destroyed under the retention schedule.")
        ref = SealedRef(
            version.object_key,
            ObjectIdentity(str(document.id), str(version.id)),
            version.wrapped_dek,
            version.key_id,
            version.key_version,
        )

        def opened(outcome: Outcome, detail: str | None = None) -> Event:
            return event_for(
                actor,
                action,
                outcome,
                student_id=document.student_id,
                document_id=document.id,
                version_id=version.id,
                purpose=reason,
                detail=detail,
            )

        try:
            chunks = self._vault.open_file(ref)  # authenticates the whole object first
        except StorageError as e:
            self._audit.record(opened(Outcome.ERROR, str(e)[:300]))
            raise
        # SECURITY: fail closed: the event is committed before any byte is handed out.
        self._audit.record(opened(Outcome.ALLOWED))
        self._audit.maybe_checkpoint()
        info = document_info(document, versions)
        return OpenedVersion(info, _version_info(version), chunks)

    # Helpers ----------------------------------------------------------------------------

    def _store(
        self,
        stream: BinaryIO | Spool,
        filename: str,
        document_id: uuid.UUID,
        version_id: uuid.UUID,
    ) -> StoredFile:
        identity = ObjectIdentity(str(document_id), str(version_id))
        # Keys are random, never derived from names or filenames.
        return self._vault.store_file(stream, filename, identity, f"versions/{uuid.uuid4()}")

    def _discard(self, object_key: str) -> None:
        """Delete the object of a version whose transaction failed, unless it committed.

        A COMMIT whose reply was lost may have succeeded, and the object then belongs to
        a stored version. When the database cannot say, the object stays as well: an
        orphan costs storage until ``satchel fsck --repair`` removes it, whereas a
        wrongly deleted object would lose the record. A failed delete leaves an orphan
        too, and is logged. Never raises a database or storage error: it runs while
        the exception that failed the upload propagates, which must stay the one raised.
        """
        try:
            with reading_session(self._engine) as session:
                committed = session.scalar(
                    select(DocumentVersion.id).where(DocumentVersion.object_key == object_key)
                )
        except SQLAlchemyError as e:
            _logger.warning(
                "kept the object %s of a failed upload: the database cannot say whether "
                "its version was stored (%s); `satchel fsck` reports it if orphaned",
                object_key,
                type(e).__name__,
            )
            return
        if committed is not None:
            return
        try:
            self._vault.store.delete(object_key)
        except StorageError as e:
            _logger.warning(
                "could not delete the object %s of a failed upload, left as an orphan for "
                "`satchel fsck --repair`: %s",
                object_key,
                e,
            )

    def _under_active_key(
        self, stored: StoredFile, document_id: uuid.UUID, version_id: uuid.UUID
    ) -> StoredFile:
        """``stored`` with its data key wrapped under the active key version, so a
        rotation while it was stored leaves no row for ``keys rotate --resume``.
        Raises KeyRetiredDuringUpload, KeyringError."""
        identity = ObjectIdentity(str(document_id), str(version_id))
        try:
            return self._vault.under_active_key(stored, identity)
        except KeyVersionRetired as e:
            raise KeyRetiredDuringUpload() from e

    def _require_key_usable(self, stored: StoredFile) -> None:
        """Check, after the version row's INSERT and before its COMMIT, that its key
        version is not retired. ``KeyManagement.retire_below`` counts rows and retires
        while no transaction writes versions, so either it waits for this one and counts
        its row (and refuses), or it retired first and this check sees it: no row is
        ever committed under a retired version. Raises KeyRetiredDuringUpload,
        KeyringError."""
        try:
            self._vault.keyring.require_usable(stored.key_id, stored.key_version)
        except KeyVersionRetired as e:
            raise KeyRetiredDuringUpload() from e

    def _version_row(
        self,
        actor: Actor,
        document_id: uuid.UUID,
        version_id: uuid.UUID,
        number: int,
        stored: StoredFile,
    ) -> DocumentVersion:
        return DocumentVersion(
            id=version_id,
            document_id=document_id,
            number=number,
            object_key=stored.object_key,
            size=stored.size,
            stored_size=stored.stored_size,
            plaintext_sha256=stored.sha256,
            mime_type=stored.mime_type,
            page_count=stored.page_count,
            original_filename=stored.filename,
            format_version=stored.format_version,
            wrapped_dek=stored.wrapped_dek,
            key_id=stored.key_id,
            key_version=stored.key_version,
            uploaded_by=_uploader(actor),
            uploaded_at=self._clock(),
        )

    def _require(self, actor: Actor, permission: Permission) -> None:
        require(self._audit, actor, permission, self._clock())

    @staticmethod
    def _document_for_guardian(
        session: Session, guardian_id: uuid.UUID, document_id: uuid.UUID
    ) -> tuple[Document | None, list[DocumentVersion], Resource]:
        """The document, its versions newest first, and what the policy needs to decide
        on ``guardian_id`` seeing it: their link to the student and the grants that could
        cover it (none without a link: the policy refuses a non-guardian whatever the
        grants). One statement."""
        rows = session.execute(
            _DOCUMENT_FOR_GUARDIAN, {"document_id": document_id, "guardian_id": guardian_id}
        ).all()
        if not rows:
            return None, [], Resource()
        document = rows[0][0]
        # The session maps each row to one object, so repeats are the same object.
        versions = list(dict.fromkeys(v for _, v, _, _ in rows if v is not None))
        grants = dict.fromkeys(grant for _, _, _, grant in rows if grant is not None)
        guardianship = rows[0][2]
        link = GuardianLink.of(guardianship) if guardianship is not None else None
        resource = Resource(
            document.student_id,
            document.id,
            document.category,
            link=link,
            grants=tuple(GrantFacts.of(grant) for grant in grants),
        )
        return document, versions, resource

    @staticmethod
    def _document_and_versions(
        session: Session, document_id: uuid.UUID
    ) -> tuple[Document | None, list[DocumentVersion]]:
        """The document and its versions, newest first, in one statement."""
        rows = session.execute(_DOCUMENT_AND_VERSIONS, {"document_id": document_id}).all()
        if not rows:
            return None, []
        return rows[0][0], [version for _, version in rows if version is not None]

    @staticmethod
    def _versions(session: Session, document_id: uuid.UUID) -> list[DocumentVersion]:
        return list(
            session.scalars(
                select(DocumentVersion)
                .where(DocumentVersion.document_id == document_id)
                .order_by(DocumentVersion.number.desc())
            )
        )

    @staticmethod
    def _versions_by_document(
        session: Session, document_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[DocumentVersion]]:
        result: dict[uuid.UUID, list[DocumentVersion]] = {}
        if not document_ids:
            return result
        rows = session.scalars(
            select(DocumentVersion)
            .where(DocumentVersion.document_id.in_(document_ids))
            .order_by(DocumentVersion.document_id, DocumentVersion.number.desc())
        )
        for row in rows:
            result.setdefault(row.document_id, []).append(row)
        return result


def _is_version_number_clash(error: IntegrityError) -> bool:
    """Whether ``error`` is the (document, number) unique constraint of versions refusing a
    row: PostgreSQL names the constraint, SQLite the columns."""
    orig = error.orig
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if constraint is not None:
        return bool(constraint == _VERSION_NUMBER_UNIQUE)
    return "document_versions.document_id, document_versions.number" in str(orig)


def _version_info(v: DocumentVersion) -> VersionInfo:
    return VersionInfo(
        id=v.id,
        number=v.number,
        size=v.size,
        sha256=v.plaintext_sha256,
        mime_type=v.mime_type,
        page_count=v.page_count,
        filename=v.original_filename,
        uploaded_at=v.uploaded_at,
        uploaded_by=v.uploaded_by,
        shredded=v.wrapped_dek is None,
    )


def document_info(document: Document, versions: list[DocumentVersion]) -> DocumentInfo:
    """The frozen view of a document row and its version rows (newest first)."""
    return DocumentInfo(
        id=document.id,
        student_id=document.student_id,
        category=document.category,
        title=document.title,
        school_year=document.school_year,
        effective_date=document.effective_date,
        created_at=document.created_at,
        versions=tuple(_version_info(v) for v in versions),
    )


def _uploader(actor: Actor) -> uuid.UUID:
    if actor.user_id is None:
        raise Forbidden("Uploads are made as a registrar account (use --as EMAIL).")
    return actor.user_id
