"""Folder export for a records transfer to another school (``satchel folder export``).

The export is a directory holding every current document of a student, decrypted, and a
``manifest.json`` that lists them (ids, categories, titles, versions, SHA-256). It is built
in a hidden sibling directory and renamed into place only when every document has been
authenticated, written and checked against the SHA-256 recorded at upload, and the export
has been audited. A failure leaves nothing at the destination: never a partial folder,
never a ``manifest.json`` that claims completeness.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit.errors import AuditError
from audit.events import Action, Outcome
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import event_for
from folders.documents import Documents
from folders.errors import FoldersError, Forbidden, InvalidInput, NotFound
from folders.models import Document, DocumentVersion, Student
from folders.policy import Permission, Resource, decide
from folders.text import clean_text
from storage.errors import StorageError

MANIFEST_NAME = "manifest.json"
FORMAT = "satchel-folder-export"
FORMAT_VERSION = 1

# File names inside an export come from ids and the sniffed type, never from titles or
# uploaded file names.
_EXTENSIONS = {
    "application/pdf": ".pdf",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tif",
}


class ExportFailed(FoldersError):
    """The export stopped; nothing was written at the destination."""

    public_message = "The export failed; nothing was written."


@dataclass(frozen=True)
class ExportedDocument:
    """One document as listed in the manifest; ``file`` is None for a destroyed version."""

    document_id: uuid.UUID
    version_id: uuid.UUID
    version_number: int
    sha256: str
    size: int
    mime_type: str
    file: str | None


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    documents: tuple[ExportedDocument, ...]
    manifest_sha256: str

    @property
    def bytes_written(self) -> int:
        return sum(d.size for d in self.documents if d.file is not None)


class FolderExport:
    """Exports a student's folder; every document read is audited as a download, and the
    export itself as ``folder.export`` (an error outcome when it fails)."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        documents: Documents,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._documents = documents
        self._clock = clock

    def require_permission(self, actor: Actor, student_id: uuid.UUID | None = None) -> None:
        """Refuse ``actor`` unless they may export folders, recording the refusal.

        Call it before looking the student up, so a refusal is audited even when the
        lookup would refuse first. Raises Forbidden, AuditUnavailable.
        """
        now = self._clock()
        resource = Resource(student_id=student_id)
        if not (
            decide(actor, Permission.LIST_FOLDER, resource, now).allowed
            and decide(actor, Permission.VIEW_DOCUMENT, resource, now).allowed
        ):
            self._audit.record(
                event_for(
                    actor,
                    Action.ACCESS_DENIED,
                    Outcome.DENIED,
                    student_id=student_id,
                    detail=f"{Action.FOLDER_EXPORT.value}: role not permitted",
                )
            )
            raise Forbidden()

    def export(
        self, actor: Actor, student_id: uuid.UUID, out_dir: Path, *, purpose: str
    ) -> ExportResult:
        """Write the folder of ``student_id`` into the new directory ``out_dir``.

        ``out_dir`` must not exist (or be an empty directory) and its parent must.
        Raises Forbidden (not a registrar; the refusal is audited), NotFound (student),
        InvalidInput (purpose or destination), ExportFailed (a document failed its
        integrity check or could not be read or written), AuditUnavailable.
        """
        reason = clean_text(purpose, "purpose", max_length=200)
        assert reason is not None
        now = self._clock()
        self.require_permission(actor, student_id)
        destination = _check_destination(out_dir)
        student, documents = self._load(student_id)
        scratch = Path(
            tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent)
        )
        try:
            exported = self._write_documents(actor, documents, scratch, reason)
            manifest = _manifest(student, documents, exported, actor, reason, now)
            manifest_sha256 = hashlib.sha256(manifest).hexdigest()
            _write_file(scratch / MANIFEST_NAME, [manifest])
            _fsync_directory(scratch)
            # SECURITY: fail closed: the export is in the audit log before it is
            # delivered, and a failure to record it delivers nothing.
            self._audit.record(
                event_for(
                    actor,
                    Action.FOLDER_EXPORT,
                    student_id=student_id,
                    purpose=reason,
                    detail=f"{len(exported)} documents; manifest sha256 {manifest_sha256}",
                )
            )
            try:
                os.rename(scratch, destination)  # atomic: all or nothing at the destination
            except OSError as e:
                raise ExportFailed(f"Cannot create {destination}: {e.strerror or e}.") from e
            _fsync_directory(destination.parent)
        except ExportFailed as e:
            shutil.rmtree(scratch, ignore_errors=True)
            # Best effort: the failure is reported to the operator either way, and an
            # unavailable audit log must not hide the reason the export stopped.
            with contextlib.suppress(AuditError):
                self._audit.record(
                    event_for(
                        actor,
                        Action.FOLDER_EXPORT,
                        Outcome.ERROR,
                        student_id=student_id,
                        purpose=reason,
                        detail=e.public_message[:1000],
                    )
                )
            raise
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        self._audit.maybe_checkpoint()
        return ExportResult(destination, exported, manifest_sha256)

    def _load(self, student_id: uuid.UUID) -> tuple[Student, list[tuple[Document, int]]]:
        """The student and their documents, each with its number of versions."""
        with Session(self._engine, expire_on_commit=False) as session:
            student = session.get(Student, student_id)
            if student is None:
                raise NotFound("No such student.")
            documents = session.scalars(
                select(Document)
                .where(Document.student_id == student_id)
                .order_by(Document.category, Document.created_at, Document.id)
            ).all()
            counts: dict[uuid.UUID, int] = {}
            for document_id in session.scalars(
                select(DocumentVersion.document_id).where(
                    DocumentVersion.document_id.in_([d.id for d in documents])
                )
            ):
                counts[document_id] = counts.get(document_id, 0) + 1
            session.expunge_all()
        return student, [(d, counts.get(d.id, 0)) for d in documents]

    def _write_documents(
        self,
        actor: Actor,
        documents: list[tuple[Document, int]],
        scratch: Path,
        purpose: str,
    ) -> tuple[ExportedDocument, ...]:
        folder = scratch / "documents"
        folder.mkdir(mode=0o700)
        exported = []
        for document, _count in documents:
            label = f"document {document.id} ({document.title!r})"
            try:
                opened = self._documents.open(
                    actor, document.id, action=Action.DOCUMENT_DOWNLOAD, purpose=purpose
                )
            except NotFound:
                current = self._current_version(document.id)
                if current is None or current.wrapped_dek is not None:
                    raise
                # The current version was destroyed under the retention schedule: it is
                # listed as such, with no file.
                exported.append(
                    ExportedDocument(
                        document.id,
                        current.id,
                        current.number,
                        current.plaintext_sha256,
                        current.size,
                        current.mime_type,
                        None,
                    )
                )
                continue
            except StorageError as e:
                raise ExportFailed(
                    f"The export was stopped and nothing was written: {label} "
                    f"could not be verified ({e.public_message})"
                ) from e
            version = opened.version
            name = f"documents/{document.id}{_EXTENSIONS.get(version.mime_type, '.bin')}"
            try:
                sha256, size = _write_file(scratch / name, opened.chunks)
            except StorageError as e:
                raise ExportFailed(
                    f"The export was stopped and nothing was written: {label} "
                    f"could not be verified ({e.public_message})"
                ) from e
            except OSError as e:
                raise ExportFailed(
                    f"The export was stopped: cannot write {label}: {e.strerror or e}"
                ) from e
            # SECURITY: decryption authenticated the object; this also proves it is the
            # file that was recorded at upload, byte for byte.
            if sha256 != version.sha256 or size != version.size:
                raise ExportFailed(
                    f"The export was stopped and nothing was written: {label} does not "
                    "match the SHA-256 recorded when it was stored"
                )
            exported.append(
                ExportedDocument(
                    document.id, version.id, version.number, sha256, size, version.mime_type, name
                )
            )
        return tuple(exported)

    def _current_version(self, document_id: uuid.UUID) -> DocumentVersion | None:
        with Session(self._engine, expire_on_commit=False) as session:
            return session.scalars(
                select(DocumentVersion)
                .where(DocumentVersion.document_id == document_id)
                .order_by(DocumentVersion.number.desc())
                .limit(1)
            ).first()


def _check_destination(out_dir: Path) -> Path:
    destination = out_dir.absolute()
    if not destination.parent.is_dir():
        raise InvalidInput(f"The directory {destination.parent} does not exist.")
    if destination.is_symlink() or (
        destination.exists() and (not destination.is_dir() or any(destination.iterdir()))
    ):
        raise InvalidInput(f"{destination} already exists; export into a new directory.")
    return destination


def _write_file(path: Path, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Create ``path`` (mode 0600, never replacing a file) from byte chunks, durably;
    return the SHA-256 and size of what was written."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest(), size


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(
    student: Student,
    documents: list[tuple[Document, int]],
    exported: tuple[ExportedDocument, ...],
    actor: Actor,
    purpose: str,
    now: datetime,
) -> bytes:
    entries = []
    for (document, count), item in zip(documents, exported, strict=True):
        entries.append(
            {
                "id": str(document.id),
                "category": document.category.value,
                "title": document.title,
                "school_year": document.school_year,
                "effective_date": _iso(document.effective_date),
                "versions": count,
                "version": {
                    "id": str(item.version_id),
                    "number": item.version_number,
                    "sha256": item.sha256,
                    "size": item.size,
                    "mime_type": item.mime_type,
                },
                "file": item.file,
                "destroyed": item.file is None,
            }
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": now.isoformat(),
        "exported_by": actor.email,
        "purpose": purpose,
        "student": {
            "id": str(student.id),
            "district_id": student.district_id,
            "state_id": student.state_id,
            "given_name": student.given_name,
            "middle_name": student.middle_name,
            "family_name": student.family_name,
            "birth_date": _iso(student.birth_date),
            "grade": student.grade,
        },
        "documents": entries,
    }
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()
