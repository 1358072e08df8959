"""Folder export for a records transfer to another school (``satchel folder export``).

The export is a directory holding every current document of a student, decrypted, and a
``manifest.json`` that lists them (ids, categories, titles, versions, SHA-256). It is built
in a hidden sibling directory and renamed into place only when every document has been
authenticated, written and checked against the SHA-256 recorded at upload, and the export
has been audited. A failure leaves nothing at the destination: never a partial folder,
never a ``manifest.json`` that claims completeness.

The scratch directory holds decrypted documents, so an export that is killed (``kill
-9``, out of memory, power loss) must not leave it behind for good. A live export holds
an exclusive ``flock`` on its scratch directory, which dies with its process; each
export first removes the scratch directories in its destination's parent that match
:data:`_SCRATCH_NAME`, belong to this user, and whose lock no process holds. A scratch
directory that such a clean-up removes between its making and its lock is made again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit.errors import AuditError
from audit.events import Action, Outcome
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import denied, event_for
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

# The scratch directory of an export to NAME: ``.NAME.partial-`` and the eight characters
# ``tempfile.mkdtemp`` draws from ``[a-z0-9_]``.
_SCRATCH_PREFIX = ".{name}.partial-"
_SCRATCH_NAME = re.compile(r"\..+\.partial-[a-z0-9_]{8}", re.DOTALL)


class ExportFailed(FoldersError):
    """The export stopped; nothing was written at the destination."""

    public_message = "The export failed; nothing was written."

    @classmethod
    def cannot(cls, what: str, error: OSError) -> ExportFailed:
        """The export stopped because the file system refused ``what``."""
        return cls(
            f"The export was stopped and nothing was written: cannot {what}: "
            f"{error.strerror or error}."
        )


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
    """A complete export at ``directory``. ``abandoned_removed`` lists the scratch
    directories of killed exports removed from its parent first; ``warnings`` say what
    went wrong without undoing the export (each is one sentence)."""

    directory: Path
    documents: tuple[ExportedDocument, ...]
    manifest_sha256: str
    abandoned_removed: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()

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
            detail = f"{Action.FOLDER_EXPORT.value}: role not permitted"
            self._audit.record(denied(actor, detail, student_id=student_id))
            raise Forbidden()

    def export(
        self, actor: Actor, student_id: uuid.UUID, out_dir: Path, *, purpose: str
    ) -> ExportResult:
        """Write the folder of ``student_id`` into the new directory ``out_dir``.

        ``out_dir`` must not exist (or be an empty directory) and its parent must.
        Abandoned scratch directories of killed exports in that parent are removed
        first. Raises Forbidden (not a registrar; the refusal is audited), NotFound
        (student), InvalidInput (purpose or destination), ExportFailed (a document
        failed its integrity check or could not be read, or the file system refused a
        write: a ``folder.export`` error event is recorded), AuditUnavailable. Once the
        export is in place it is returned, with a warning if its parent directory could
        not be flushed to disk.
        """
        reason = clean_text(purpose, "purpose", max_length=200)
        assert reason is not None
        now = self._clock()
        self.require_permission(actor, student_id)
        destination = _check_destination(out_dir)
        student, documents = self._load(student_id)
        removed, warnings = remove_abandoned_exports(destination.parent)
        try:
            result = self._export(actor, student, documents, destination, reason, now)
        except ExportFailed as e:
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
        self._audit.maybe_checkpoint()
        return replace(result, abandoned_removed=removed, warnings=(*warnings, *result.warnings))

    def _export(
        self,
        actor: Actor,
        student: Student,
        documents: list[tuple[Document, int]],
        destination: Path,
        purpose: str,
        now: datetime,
    ) -> ExportResult:
        with _scratch_for(destination) as scratch:
            exported = self._write_documents(actor, documents, scratch, purpose)
            manifest = _manifest(student, documents, exported, actor, purpose, now)
            manifest_sha256 = hashlib.sha256(manifest).hexdigest()
            try:
                _write_file(scratch / MANIFEST_NAME, [manifest])
            except OSError as e:
                raise ExportFailed.cannot(f"write {MANIFEST_NAME} in {scratch}", e) from e
            try:
                _fsync_directory(scratch)
            except OSError as e:
                raise ExportFailed.cannot(f"flush {scratch} to disk", e) from e
            # SECURITY: fail closed: the export is in the audit log before it is
            # delivered, and a failure to record it delivers nothing.
            self._audit.record(
                event_for(
                    actor,
                    Action.FOLDER_EXPORT,
                    student_id=student.id,
                    purpose=purpose,
                    detail=f"{len(exported)} documents; manifest sha256 {manifest_sha256}",
                )
            )
            try:
                os.rename(scratch, destination)  # atomic: all or nothing at the destination
            except OSError as e:
                raise ExportFailed.cannot(f"create {destination}", e) from e
        warnings: tuple[str, ...] = ()
        try:
            _fsync_directory(destination.parent)
        except OSError as e:
            # The export is complete, verified, audited and in place: failing it now
            # would report as lost an export that exists. What is not certain is that
            # the rename survives a power loss in the next few seconds.
            warnings = (
                f"the export is complete at {destination}, but {destination.parent} could "
                f"not be flushed to disk ({e.strerror or e}): after a power loss, check "
                "that it is still there",
            )
        return ExportResult(destination, exported, manifest_sha256, warnings=warnings)

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
        try:
            folder.mkdir(mode=0o700)
        except OSError as e:
            raise ExportFailed.cannot(f"create {folder}", e) from e
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
                raise ExportFailed.cannot(f"write {label}", e) from e
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
    parent = destination.parent
    try:
        if not parent.is_dir():
            if parent.exists():
                raise InvalidInput(f"{parent} is not a directory.")
            raise InvalidInput(f"The directory {parent} does not exist.")
        if destination.is_symlink() or (
            destination.exists() and (not destination.is_dir() or any(destination.iterdir()))
        ):
            raise InvalidInput(f"{destination} already exists; export into a new directory.")
    except OSError as e:
        raise InvalidInput(f"Cannot export to {destination}: {e.strerror or e}.") from e
    return destination


@contextlib.contextmanager
def _scratch_for(destination: Path) -> Iterator[Path]:
    """A new private scratch directory beside ``destination``, locked for the block and
    removed unless the block renamed it away. Raises ExportFailed if it cannot be made."""
    scratch, fd = _locked_scratch(destination)
    try:
        yield scratch
    except BaseException:
        # SECURITY: decrypted documents do not outlive a failed export. If this fails
        # too, the next export into this parent removes what is left.
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        os.close(fd)  # releases the lock


# Another export's clean-up takes a scratch directory made but not yet locked for
# abandoned: the directory is made again, a few times at most.
_SCRATCH_ATTEMPTS = 5


def _locked_scratch(destination: Path) -> tuple[Path, int]:
    """Make a scratch directory beside ``destination`` and lock it; returns it and the
    descriptor holding the lock. Raises ExportFailed."""
    prefix = _SCRATCH_PREFIX.format(name=destination.name)
    for _ in range(_SCRATCH_ATTEMPTS):
        try:
            scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
        except OSError as e:
            raise ExportFailed.cannot(f"create a directory in {destination.parent}", e) from e
        try:
            fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # removed by a clean-up between mkdtemp and open
        except OSError as e:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ExportFailed.cannot(f"open {scratch}", e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A clean-up that locked it first has removed it (or is removing it): the
            # path then names nothing, or something else.
            if os.stat(scratch, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return scratch, fd
        except (BlockingIOError, FileNotFoundError):
            pass
        except OSError as e:
            os.close(fd)
            raise ExportFailed.cannot(f"lock {scratch}", e) from e
        os.close(fd)
    raise ExportFailed(
        f"Could not make a scratch directory in {destination.parent}: other exports' "
        f"clean-ups removed it {_SCRATCH_ATTEMPTS} times. Try again."
    )


def remove_abandoned_exports(parent: Path) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Remove the scratch directories that killed exports left in ``parent``.

    Only directories (not symbolic links) named as Satchel names them
    (``.NAME.partial-XXXXXXXX``), owned by this user, and whose ``flock`` no process
    holds, that is, whose export is dead. Each is removed while its lock is held, so an
    export cannot start using it meanwhile. Returns the directories removed, and one
    warning per directory that could not be (it is tried again next time); never raises.
    """
    removed: list[Path] = []
    warnings: list[str] = []
    try:
        entries = [e for e in os.scandir(parent) if _SCRATCH_NAME.fullmatch(e.name)]
    except OSError as e:
        return (), (f"cannot look for abandoned exports in {parent}: {e.strerror or e}",)
    for entry in entries:
        path = Path(entry.path)
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not something an export made
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live export is writing it
            shutil.rmtree(path)
            removed.append(path)
        except OSError as e:
            warnings.append(
                f"cannot remove {path}, left by an interrupted export: {e.strerror or e}"
            )
        finally:
            os.close(fd)
    return tuple(removed), tuple(warnings)


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
