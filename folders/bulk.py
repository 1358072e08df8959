"""Bulk ingest of digitized paper folders from a CSV manifest (``satchel ingest``).

The manifest has the columns ``student_id, category, title, school_year, document_date,
path`` (any order; ``path`` is relative to the manifest's directory). Each valid row is
stored as an upload in the browser is: the vault inspects, encrypts and stores the file,
then :meth:`Documents.add_stored` commits the rows and the audit event in one
transaction, as :meth:`Documents.upload` does. ``docs/bulk-ingest.md`` describes the
design; in short:

- **Idempotent.** Every row has an *ingest key*: the SHA-256 of its student, metadata and
  file contents. It is stored on the document (``documents.ingest_key``, unique) in the
  same transaction as the document, so a row whose key exists is "already stored", and
  running a manifest again stores only what is missing. A run reads the keys stored for
  a student once, with the student's first row.
- **No orphans after a crash.** Before an object is put, an *intent* naming it is
  committed to the ``ingest_intents`` table; it is removed once the row is settled (the
  intents of committed rows in batches). A run killed between the put and the commit
  leaves the intent behind, and the next run deletes each such object that no version
  references, then the intent. The bucket is never listed.
- **One run at a time.** A run holds an exclusive lock (a PostgreSQL advisory lock, or a
  lock file beside the SQLite database) that dies with its process, so recovery never
  touches the intents of a live run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import Connection, Engine, Select, bindparam, delete, insert, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from audit.errors import AuditError
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import require
from folders.categories import Category
from folders.documents import Documents, check_school_year, parse_category
from folders.errors import Conflict, Forbidden, InvalidInput, KeyRetiredDuringUpload, NotFound
from folders.models import Document, DocumentVersion, IngestIntent
from folders.policy import Permission
from folders.students import StudentInfo, Students
from folders.text import clean_text
from storage.envelope import ObjectIdentity
from storage.errors import ContentRejected, StorageError, StorageUnavailable
from storage.ingest import Spool, Vault
from storage.objects import ForwardingStore, ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("student_id", "category", "title", "school_year", "document_date", "path")
REPORT_COLUMNS = ("line", *MANIFEST_COLUMNS, "reason", "detail")
# Intents are named ``ingest-intents/<object key>`` where they are reported (fsck).
INTENT_PREFIX = "ingest-intents/"

_KEY_DOMAIN = "satchel-ingest-key/1"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_PATH = 1024
# Intents of committed rows deleted per statement.
_SETTLED_BATCH = 100
# Any two 64-bit numbers would do; this one is the start of SHA-256("satchel bulk ingest").
_ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"satchel bulk ingest").digest()[:8], "big", signed=True
)
# The statements of every row, built once: building one costs more than running it.
_DOCUMENT_WITH_KEY = select(Document.id).where(Document.ingest_key == bindparam("key"))
_KEYS_OF_STUDENT = select(Document.ingest_key, Document.id).where(
    Document.student_id == bindparam("student_id"), Document.ingest_key.is_not(None)
)
_VERSION_OF_OBJECT = select(DocumentVersion.id).where(
    DocumentVersion.object_key == bindparam("object_key")
)
_ADD_INTENT = insert(IngestIntent).values(
    object_key=bindparam("object_key"), created_at=bindparam("created_at")
)
_REMOVE_INTENTS = delete(IngestIntent).where(
    IngestIntent.object_key.in_(bindparam("object_keys", expanding=True))
)
_INTENTS = select(IngestIntent.object_key, IngestIntent.created_at).order_by(
    IngestIntent.created_at, IngestIntent.object_key
)
_INTENT_CREATED_AT = select(IngestIntent.created_at).where(
    IngestIntent.object_key == bindparam("object_key")
)


class ManifestError(InvalidInput):
    """The manifest as a whole cannot be read (encoding, CSV syntax, header); nothing is
    stored. Problems of single rows are reported per row instead."""


class IngestBusy(Conflict):
    """Another bulk ingest holds the lock on this database."""

    public_message = (
        "Another `satchel ingest` is running against this database; run again when it ends."
    )


class RowProblem(StrEnum):
    """Why a row was not stored (besides the content inspection's own reason codes,
    e.g. ``pdf_javascript`` or ``too_large``, which are reported unchanged)."""

    MALFORMED_ROW = "malformed_row"
    BAD_STUDENT_ID = "bad_student_id"
    BAD_CATEGORY = "bad_category"
    BAD_TITLE = "bad_title"
    BAD_SCHOOL_YEAR = "bad_school_year"
    BAD_DOCUMENT_DATE = "bad_document_date"
    BAD_PATH = "bad_path"
    UNKNOWN_STUDENT = "unknown_student"
    FILE_UNREADABLE = "file_unreadable"
    INVALID_DOCUMENT = "invalid_document"
    # The key version that wrapped the row's data key was retired while it was stored.
    KEY_RETIRED = "key_retired"
    # The run stopped (infrastructure failure or interruption) before the row was done.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_ERROR = "storage_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    DATABASE_ERROR = "database_error"
    NOT_ATTEMPTED = "not_attempted"


class RowOutcome(StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    REJECTED = "rejected"  # the row or its file is wrong: fix it, then run again
    FAILED = "failed"  # the run could not finish it: run again as it is


@dataclass(frozen=True)
class ManifestRow:
    """One valid manifest row. ``cells`` are the values as written, in
    :data:`MANIFEST_COLUMNS` order; ``path`` is relative to ``base_dir``, the manifest's
    directory."""

    line: int
    cells: tuple[str, ...]
    student_id: str
    category: Category
    title: str
    school_year: str | None
    document_date: date | None
    path: PurePosixPath
    base_dir: Path


@dataclass(frozen=True)
class RowResult:
    """What became of one manifest row. ``reason`` is a stable code, ``detail`` a
    sentence for people; ``size`` counts the bytes stored by this run."""

    line: int
    cells: tuple[str, ...]
    outcome: RowOutcome
    reason: str | None = None
    detail: str | None = None
    document_id: uuid.UUID | None = None
    size: int = 0


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the valid rows and the rows rejected while parsing."""

    base_dir: Path
    rows: tuple[ManifestRow, ...]
    rejected: tuple[RowResult, ...]

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.rejected)


@dataclass(frozen=True)
class IngestSummary:
    """The outcome of a run. ``unfinished_removed`` counts the uploads an interrupted
    earlier run left uncommitted (their objects, where written, were deleted);
    ``stopped_by`` says why this run ended early, if it did."""

    results: tuple[RowResult, ...]
    seconds: float
    unfinished_removed: int
    stopped_by: str | None

    def count(self, outcome: RowOutcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def complete(self) -> bool:
        """Whether every row is stored now (by this run or an earlier one)."""
        done = (RowOutcome.STORED, RowOutcome.ALREADY_STORED)
        return all(r.outcome in done for r in self.results)

    @property
    def bytes_stored(self) -> int:
        return sum(r.size for r in self.results)

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_stored / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def not_stored(self) -> tuple[RowResult, ...]:
        done = (RowOutcome.STORED, RowOutcome.ALREADY_STORED)
        return tuple(
            sorted((r for r in self.results if r.outcome not in done), key=lambda r: r.line)
        )


# Parsing ------------------------------------------------------------------------------


def parse_manifest(data: bytes, base_dir: Path) -> Manifest:
    """Parse a manifest's bytes (UTF-8, an optional byte-order mark, any line endings).

    Every row is checked without touching the file system; bad rows come back in
    ``rejected`` with a precise reason, and rows whose cells are all blank are skipped.
    Raises ManifestError (and nothing else) when the manifest as a whole is unusable: not
    UTF-8, not CSV, or a header that lacks, repeats or adds columns.
    """
    try:
        decoded = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"The manifest is not UTF-8 text (byte {e.start} is invalid); save it as UTF-8 CSV."
        ) from None
    reader = csv.reader(io.StringIO(decoded, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError("The manifest is empty; it needs a header row.")
        positions = _header_positions(header)
        rows: list[ManifestRow] = []
        rejected: list[RowResult] = []
        line = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                parsed = _parse_row(line, cells, positions, len(header), base_dir)
                if isinstance(parsed, ManifestRow):
                    rows.append(parsed)
                else:
                    rejected.append(parsed)
            line = reader.line_num + 1
    except csv.Error as e:
        raise ManifestError(
            f"The manifest is not valid CSV near line {reader.line_num}: {e}."
        ) from None
    return Manifest(base_dir, tuple(rows), tuple(rejected))


def _header_positions(header: list[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [c for c in MANIFEST_COLUMNS if c not in names]
    # Blank header cells (trailing commas from spreadsheets) name no column.
    unknown = sorted({n for n in names if n and n not in MANIFEST_COLUMNS})
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown {', '.join(repr(u[:40]) for u in unknown[:5])}")
    if repeated:
        problems.append(f"repeated {', '.join(repr(r[:40]) for r in repeated[:5])}")
    if problems:
        raise ManifestError(
            f"The manifest header must name the columns {', '.join(MANIFEST_COLUMNS)}: "
            f"{'; '.join(problems)}."
        )
    return {name: names.index(name) for name in MANIFEST_COLUMNS}


def _parse_row(
    line: int, cells: list[str], positions: dict[str, int], width: int, base_dir: Path
) -> ManifestRow | RowResult:
    values = tuple(
        cells[positions[c]] if positions[c] < len(cells) else "" for c in MANIFEST_COLUMNS
    )
    if len(cells) != width:
        return RowResult(
            line,
            values,
            RowOutcome.REJECTED,
            RowProblem.MALFORMED_ROW.value,
            f"The row has {len(cells)} cells; the header has {width}.",
        )
    cell = dict(zip(MANIFEST_COLUMNS, values, strict=True))
    problem = RowProblem.BAD_STUDENT_ID
    try:
        student_id = clean_text(cell["student_id"], "student id", max_length=64)
        problem = RowProblem.BAD_CATEGORY
        category = _category(cell["category"])
        problem = RowProblem.BAD_TITLE
        title = clean_text(cell["title"], "title", max_length=200)
        problem = RowProblem.BAD_SCHOOL_YEAR
        school_year = _school_year(cell["school_year"])
        problem = RowProblem.BAD_DOCUMENT_DATE
        document_date = _document_date(cell["document_date"])
        problem = RowProblem.BAD_PATH
        path = _relative_path(cell["path"])
    except InvalidInput as e:
        return RowResult(line, values, RowOutcome.REJECTED, problem.value, e.public_message)
    assert student_id is not None and title is not None  # required, so never None
    return ManifestRow(
        line, values, student_id, category, title, school_year, document_date, path, base_dir
    )


def _category(value: str) -> Category:
    value = value.strip().lower()
    if len(value) > 32:  # keeps the message short; no category is this long
        raise InvalidInput(f"Unknown category {value[:32]!r}...")
    return parse_category(value)


def _school_year(value: str) -> str | None:
    if len(value.strip()) > 9:
        raise InvalidInput(f"The school year must look like 2025-2026, not {value[:20]!r}.")
    return check_school_year(value)


def _document_date(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    if not _DATE.fullmatch(value):
        raise InvalidInput(f"The document date must look like 2025-09-01, not {value[:40]!r}.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"The document date {value!r} is not a real date.") from None


def _relative_path(value: str) -> PurePosixPath:
    value = value.strip()
    if not value:
        raise InvalidInput("The path is required.")
    if len(value) > _MAX_PATH:
        raise InvalidInput(f"The path is longer than {_MAX_PATH} characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput("The path contains control characters.")
    if "\\" in value:
        raise InvalidInput("The path contains a backslash; separate folders with '/'.")
    path = PurePosixPath(value)
    # SECURITY: a manifest names files in its own directory tree only; the resolved
    # path (symbolic links followed) is checked again before the file is opened.
    if path.is_absolute():
        raise InvalidInput("The path must be relative to the manifest's directory.")
    if ".." in path.parts:
        raise InvalidInput("The path may not contain '..'.")
    return path


def ingest_key(row: ManifestRow, sha256: str) -> str:
    """The row's idempotency key: SHA-256 over a canonical JSON array of the student id,
    category, title, school year, document date and the file's SHA-256."""
    fields = [
        _KEY_DOMAIN,
        row.student_id,
        row.category.value,
        row.title,
        row.school_year or "",
        row.document_date.isoformat() if row.document_date else "",
        sha256,
    ]
    canonical = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# The service ----------------------------------------------------------------------------


class _RowRejected(Exception):
    """Internal: this row cannot be stored, for the given reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BulkIngest:
    """Stores the rows of a manifest, in parallel, at most once each.

    ``vault`` is the installation's vault, which spools each file; each row is stored
    through a :class:`Documents` service over the same object store, with an intent
    committed before each object is put. ``monotonic`` and ``sleep`` time the run and
    the wait for the lock.
    """

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        vault: Vault,
        students: Students,
        clock: Callable[[], datetime],
        *,
        lock_wait_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._vault = vault
        self._students = students
        self._clock = clock
        self._documents = Documents(engine, audit, vault, clock)
        self._intents = IngestIntents(engine)
        self._lock = IngestLock(
            engine, wait_seconds=lock_wait_seconds, monotonic=monotonic, sleep=sleep
        )
        self._monotonic = monotonic
        self._student_cache: dict[str, StudentInfo | None] = {}
        self._cache_lock = threading.Lock()

    # Whole runs -------------------------------------------------------------------------

    def run(
        self,
        actor: Actor,
        manifest: Manifest,
        *,
        workers: int = 4,
        on_result: Callable[[RowResult], None] | None = None,
    ) -> IngestSummary:
        """Recover from an interrupted run, then store every row of ``manifest``.

        ``on_result`` is called from this thread once per row, as rows finish. A row
        problem rejects that row only. An unavailable object store, audit log or
        database stops the run: rows in progress finish, the rest are reported as
        failed, and running again resumes. Raises Forbidden (not a registrar account),
        IngestBusy (another run holds the lock), and the infrastructure errors met
        while recovering; an interruption (Ctrl-C) cancels the rows not started, lets
        the started ones finish, and propagates.
        """
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._require_registrar(actor)
        results: list[RowResult] = []

        def emit(result: RowResult) -> None:
            results.append(result)
            if on_result is not None:
                on_result(result)

        with self._cache_lock:
            self._student_cache.clear()  # students added since the last run count
        with self._lock.held():
            removed = self.recover()
            started = self._monotonic()
            for rejection in manifest.rejected:
                emit(rejection)
            settled = _SettledIntents(self._intents)
            stored = _StoredKeys(self._engine)
            try:
                stopped_by = self._run_rows(actor, manifest, workers, emit, settled, stored)
            finally:
                settled.flush()
            seconds = self._monotonic() - started
        return IngestSummary(tuple(results), seconds, removed, stopped_by)

    def _run_rows(
        self,
        actor: Actor,
        manifest: Manifest,
        workers: int,
        emit: Callable[[RowResult], None],
        settled: _SettledIntents,
        stored: _StoredKeys,
    ) -> str | None:
        stopped_by: str | None = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            futures: dict[Future[RowResult], ManifestRow] = {
                pool.submit(self._ingest_row, actor, row, settled, stored): row
                for row in manifest.rows
            }
            try:
                for future in as_completed(futures):
                    row = futures[future]
                    try:
                        result = future.result()
                    except CancelledError:
                        result = _failed(
                            row,
                            RowProblem.NOT_ATTEMPTED,
                            "The run stopped before this row was started.",
                        )
                    except (StorageError, AuditError, SQLAlchemyError, OSError) as e:
                        problem, detail = _infrastructure_problem(e)
                        result = _failed(row, problem, detail)
                        if stopped_by is None:
                            stopped_by = detail
                            for pending in futures:
                                pending.cancel()
                    emit(result)
            except BaseException:
                # Ctrl-C or a bug: start nothing new; rows in progress finish (and are
                # settled) while the pool shuts down, then the error propagates.
                for pending in futures:
                    pending.cancel()
                raise
        return stopped_by

    def recover(self) -> int:
        """Settle the intents an interrupted run left: delete each object named that no
        version references (it may never have been written), then the intent. Return
        how many such unfinished uploads there were. Call it only while holding the run
        lock (``run`` does).

        Raises StorageError or a database error if the store or database fails; the
        intents not yet settled stay for the next run.
        """
        unfinished = 0
        for object_key, _ in self._intents.all():
            if self._settle(object_key):
                unfinished += 1
        return unfinished

    # One row ----------------------------------------------------------------------------

    def ingest_one(self, actor: Actor, row: ManifestRow) -> RowResult:
        """Store one row unless its ingest key is already stored.

        Returns STORED, ALREADY_STORED or REJECTED (the row or its file is wrong; nothing
        is stored). Raises StorageError, AuditError or a database error when the
        installation fails, Forbidden for an actor who may not upload; whatever happens,
        no object outlives the call without a document version or an intent.
        """
        self._require_registrar(actor)
        settled = _SettledIntents(self._intents)
        try:
            # No run lock is held here, so nothing is kept: the key is looked up now.
            return self._ingest_row(actor, row, settled, _StoredKeys(self._engine, per_row=True))
        finally:
            settled.flush()

    def _ingest_row(
        self, actor: Actor, row: ManifestRow, settled: _SettledIntents, stored: _StoredKeys
    ) -> RowResult:
        """``ingest_one``, leaving the intents of committed rows to ``settled`` and
        looking the row's key up in ``stored``."""
        try:
            student = self._student(actor, row.student_id)
            with self._spooled(row) as spool:
                key = ingest_key(row, spool.sha256)
                existing = stored.find(student.id, key)
                if existing is not None:
                    return _done(row, RowOutcome.ALREADY_STORED, existing)
                return self._store(actor, student, row, spool, key, settled, stored)
        except _RowRejected as e:
            return RowResult(row.line, row.cells, RowOutcome.REJECTED, e.reason, e.detail)
        except ContentRejected as e:
            return RowResult(row.line, row.cells, RowOutcome.REJECTED, e.reason, e.message)
        except (InvalidInput, NotFound) as e:
            return RowResult(
                row.line,
                row.cells,
                RowOutcome.REJECTED,
                RowProblem.INVALID_DOCUMENT.value,
                e.public_message,
            )
        except KeyRetiredDuringUpload as e:
            return _failed(row, RowProblem.KEY_RETIRED, e.public_message)

    def _store(
        self,
        actor: Actor,
        student: StudentInfo,
        row: ManifestRow,
        spool: Spool,
        key: str,
        settled: _SettledIntents,
        stored: _StoredKeys,
    ) -> RowResult:
        """Seal and put the spooled file, then record it as ``Documents.upload`` does,
        with the ingest key (``Documents.add_stored``: the row's student is known, so
        ``upload``'s lookup is not repeated)."""
        journaled = _Journaled(self._vault.store, self._intents, self._clock)
        # Rows arrive spooled by self._vault; this one only seals and stores them.
        vault = Vault(journaled, self._vault.keyring, max_bytes=self._vault.max_bytes)
        document_id, version_id = uuid.uuid4(), uuid.uuid4()
        committed = False
        try:
            # Keys are random, never derived from names or filenames.
            sealed = vault.store_spooled(
                spool,
                row.path.name,
                ObjectIdentity(str(document_id), str(version_id)),
                f"versions/{uuid.uuid4()}",
            )
            self._documents.add_stored(
                actor,
                student.id,
                sealed,
                document_id,
                version_id,
                category=row.category,
                title=row.title,
                school_year=row.school_year,
                effective_date=row.document_date,
                ingest_key=key,
            )
            committed = True
            stored.add(student.id, key, document_id)
        except DatabaseIntegrityError:
            # Another row with the same key (a repeated row) committed first.
            existing = self._document_with_key(key)
            if existing is None:
                raise
            return _done(row, RowOutcome.ALREADY_STORED, existing)
        finally:
            for object_key in journaled.keys:
                if committed:
                    # The version references the one object put: only the intent is
                    # left to remove.
                    settled.add(object_key)
                    continue
                with contextlib.suppress(StorageError, SQLAlchemyError):
                    # Whatever cannot be settled now keeps its intent for the next run.
                    self._settle(object_key)
        self._audit.maybe_checkpoint()
        return RowResult(
            row.line, row.cells, RowOutcome.STORED, document_id=document_id, size=sealed.size
        )

    def _require_registrar(self, actor: Actor) -> None:
        """Raise Forbidden unless ``actor`` is an account that may upload documents."""
        message = "Bulk ingest is done as a registrar account (use --as EMAIL)."
        if actor.user_id is None:
            raise Forbidden(message)
        require(self._audit, actor, Permission.MANAGE_FOLDER, self._clock(), message)

    def _settle(self, object_key: str) -> bool:
        """Delete the object unless a version references it, then its intent; return
        whether the upload was unfinished (no version references the object)."""
        referenced = _read_one(self._engine, _VERSION_OF_OBJECT, {"object_key": object_key})
        if referenced is None:
            self._vault.store.delete(object_key)
        # The intent goes last: if anything above fails, the next run tries again.
        self._intents.remove([object_key])
        return referenced is None

    def _student(self, actor: Actor, district_id: str) -> StudentInfo:
        with self._cache_lock:
            known = district_id in self._student_cache
            student = self._student_cache.get(district_id)
        if not known:
            try:
                student = self._students.get_by_district_id(actor, district_id)
            except NotFound:
                student = None
            with self._cache_lock:
                self._student_cache[district_id] = student
        if student is None:
            raise _RowRejected(
                RowProblem.UNKNOWN_STUDENT.value, f"No student has the district id {district_id}."
            )
        return student

    @contextlib.contextmanager
    def _spooled(self, row: ManifestRow) -> Iterator[Spool]:
        """The row's file copied into a private spool (size limit enforced), with its
        SHA-256. Hashing the spool, not the file, means the key always describes exactly
        the bytes that are stored, even if the file changes meanwhile."""
        path = _open_path(row.base_dir, row.path)
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as e:
            raise _RowRejected(
                RowProblem.FILE_UNREADABLE.value, f"Cannot open {row.path}: {e.strerror or e}."
            ) from None
        with handle:
            spool = self._vault.spool(
                io.BufferedReader(_SourceReader(handle, row.path)),
                size_hint=os.fstat(handle.fileno()).st_size,
            )
        with spool:
            yield spool

    def _document_with_key(self, key: str) -> uuid.UUID | None:
        return _read_one(self._engine, _DOCUMENT_WITH_KEY, {"key": key})


class IngestLock:
    """The database's exclusive bulk-ingest lock, which every ``satchel ingest`` run holds
    for its whole duration (and ``satchel fsck --repair`` while it deletes).

    A PostgreSQL session-level advisory lock on a connection held for the block (exempt
    from ``idle_session_timeout``, which would end it while it waits), or
    ``flock`` on ``<database>.ingest-lock`` beside a SQLite file (nothing for a private
    in-memory database). Either dies with its process, ``kill -9`` included, so nobody
    waits on a dead run. ``held()`` waits up to ``wait_seconds`` for another holder,
    then raises IngestBusy.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        wait_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._engine = engine
        self._wait = wait_seconds
        self._monotonic = monotonic
        self._sleep = sleep

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block. Raises IngestBusy, and the database's errors
        while taking it; failing to release it never replaces the block's outcome."""
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            with self._advisory_lock():
                yield
            return
        database = self._engine.url.database
        if dialect != "sqlite":
            raise NotImplementedError(f"bulk ingest does not support {dialect}")
        if not database or database == ":memory:":
            yield  # a private in-memory database has no other process to exclude
            return
        with self._file_lock(Path(f"{database}.ingest-lock")):
            yield

    @contextlib.contextmanager
    def _advisory_lock(self) -> Iterator[None]:
        with self._engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            exempt = (connection.dialect.server_version_info or (0,)) >= (14,)
            if exempt:
                # The connection sits idle for the whole run: a server or role setting
                # of idle_session_timeout would end it, and the lock with it, silently.
                connection.execute(text("SET idle_session_timeout = 0"))
            query = text("SELECT pg_try_advisory_lock(:key)")
            self._wait_for(lambda: bool(connection.scalar(query, {"key": _ADVISORY_LOCK_KEY})))
            try:
                yield
            finally:
                try:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                    )
                    if exempt:  # the connection goes back to the pool
                        connection.execute(text("RESET idle_session_timeout"))
                except SQLAlchemyError as e:
                    # The lock belongs to the session: a database outage that broke the
                    # connection has released it already, and closing the connection
                    # releases it otherwise. Raising here would replace the run's own
                    # outcome (its failed rows, its report) with this error.
                    _logger.warning(
                        "the ingest lock was not released explicitly (%s); it is released "
                        "with its database connection",
                        type(e.orig if isinstance(e, DBAPIError) and e.orig else e).__name__,
                    )
                    connection.invalidate()

    @contextlib.contextmanager
    def _file_lock(self, path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:

            def try_lock() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            self._wait_for(try_lock)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _wait_for(self, attempt: Callable[[], bool]) -> None:
        deadline = self._monotonic() + self._wait
        while not attempt():
            if self._monotonic() >= deadline:
                raise IngestBusy()
            self._sleep(0.2)


class _StoredKeys:
    """The ingest keys stored already, for the rows of one run.

    Each student's keys are loaded once, when the first of its rows asks, and the keys
    the run commits are added: one query per student rather than one per row. A key
    that something else commits meanwhile is refused by the unique index when the row
    commits, which then counts as already stored. With ``per_row`` every lookup asks
    the database instead.
    """

    def __init__(self, engine: Engine, *, per_row: bool = False) -> None:
        self._engine = engine
        self._per_row = per_row
        self._by_student: dict[uuid.UUID, dict[str, uuid.UUID]] = {}
        self._lock = threading.Lock()

    def find(self, student_id: uuid.UUID, key: str) -> uuid.UUID | None:
        """The document stored under ``key`` for the student, or None."""
        if self._per_row:
            return _read_one(self._engine, _DOCUMENT_WITH_KEY, {"key": key})
        with self._lock:
            keys = self._by_student.get(student_id)
        if keys is None:
            with _autocommit(self._engine) as connection:
                rows = connection.execute(_KEYS_OF_STUDENT, {"student_id": student_id})
                loaded = {str(stored_key): document_id for stored_key, document_id in rows}
            with self._lock:
                # Two rows of a new student may load its keys at once: the first wins.
                keys = self._by_student.setdefault(student_id, loaded)
        with self._lock:
            return keys.get(key)

    def add(self, student_id: uuid.UUID, key: str, document_id: uuid.UUID) -> None:
        """Record a key committed since the student's keys were loaded."""
        with self._lock:
            keys = self._by_student.get(student_id)
            if keys is not None:
                keys[key] = document_id


@contextlib.contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection in autocommit mode, for reads: each statement runs on its own,
    without the BEGIN and ROLLBACK round trips of a transaction."""
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


def _read_one(
    engine: Engine, statement: Select[tuple[uuid.UUID]], parameters: dict[str, str]
) -> uuid.UUID | None:
    """The first column of the first row of ``statement``, or None."""
    with _autocommit(engine) as connection:
        return connection.scalar(statement, parameters)


class IngestIntents:
    """The ``ingest_intents`` table: the objects bulk ingest is putting or has put and
    not yet settled. Each call is one statement in autocommit mode; database errors
    (SQLAlchemyError) propagate."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, object_key: str, created_at: datetime) -> None:
        """Commit an intent for ``object_key``; IntegrityError if one exists."""
        with _autocommit(self._engine) as connection:
            connection.execute(_ADD_INTENT, {"object_key": object_key, "created_at": created_at})

    def remove(self, object_keys: Sequence[str]) -> None:
        """Delete the intents of ``object_keys`` (those that exist)."""
        if object_keys:
            with _autocommit(self._engine) as connection:
                connection.execute(_REMOVE_INTENTS, {"object_keys": list(object_keys)})

    def all(self) -> list[tuple[str, datetime]]:
        """Every intent, oldest first: ``(object key, created at)``."""
        with _autocommit(self._engine) as connection:
            return [(str(key), created) for key, created in connection.execute(_INTENTS)]

    def created_at(self, object_key: str) -> datetime | None:
        """When the intent for ``object_key`` was committed, or None if there is none."""
        with _autocommit(self._engine) as connection:
            return connection.scalar(_INTENT_CREATED_AT, {"object_key": object_key})


class _Journaled(ForwardingStore):
    """The installation's object store, with an intent committed before every object.

    ``keys`` lists the objects put (or attempted) through it, for the caller to settle.
    """

    def __init__(
        self, store: ObjectStore, intents: IngestIntents, clock: Callable[[], datetime]
    ) -> None:
        super().__init__(store)
        self._intents = intents
        self._clock = clock
        self.keys: list[str] = []

    def put(
        self,
        key: str,
        stream: BinaryIO,
        size_hint: int | None = None,
        *,
        retain_until: datetime | None = None,
    ) -> ObjectInfo:
        # Listed first: even an intent whose commit failed halfway (its outcome unknown)
        # is settled by the caller.
        self.keys.append(key)
        self._intents.add(key, self._clock())
        return self._store.put(key, stream, size_hint, retain_until=retain_until)


class _SettledIntents:
    """Intents of committed rows, deleted in batches of ``_SETTLED_BATCH`` (one statement
    per batch) and by ``flush``. An intent left behind by a failed batch or a crash is
    harmless: recovery finds its version committed and removes only the intent."""

    def __init__(self, intents: IngestIntents) -> None:
        self._intents = intents
        self._keys: list[str] = []
        self._lock = threading.Lock()

    def add(self, object_key: str) -> None:
        with self._lock:
            self._keys.append(object_key)
            if len(self._keys) < _SETTLED_BATCH:
                return
            batch, self._keys = self._keys, []
        self._remove(batch)

    def flush(self) -> None:
        with self._lock:
            batch, self._keys = self._keys, []
        self._remove(batch)

    def _remove(self, batch: list[str]) -> None:
        with contextlib.suppress(SQLAlchemyError):
            self._intents.remove(batch)


class _SourceReader(io.RawIOBase):
    """A manifest file as a raw stream whose read errors reject the row, so they are
    not mistaken for a failure of the spool or the store."""

    def __init__(self, handle: io.FileIO, name: PurePosixPath) -> None:
        super().__init__()
        self._handle = handle
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        try:
            return self._handle.readinto(buffer)
        except OSError as e:
            raise _RowRejected(
                RowProblem.FILE_UNREADABLE.value, f"Cannot read {self._name}: {e.strerror or e}."
            ) from None


def _open_path(base_dir: Path, relative: PurePosixPath) -> Path:
    """The row's file, resolved; rejected unless it is a regular file inside base_dir."""
    try:
        root = base_dir.resolve(strict=True)
        path = (root / relative).resolve(strict=True)
        mode = path.stat().st_mode
    except (OSError, RuntimeError) as e:  # RuntimeError: a symbolic link loop
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise _RowRejected(
            RowProblem.FILE_UNREADABLE.value, f"Cannot open {relative}: {detail}."
        ) from None
    # SECURITY: a symbolic link may not lead out of the manifest's directory tree.
    if not path.is_relative_to(root):
        raise _RowRejected(
            RowProblem.BAD_PATH.value, f"{relative} leads outside the manifest's directory."
        )
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise _RowRejected(RowProblem.FILE_UNREADABLE.value, f"{relative} is not a file.")
    return path


def _done(row: ManifestRow, outcome: RowOutcome, document_id: uuid.UUID) -> RowResult:
    return RowResult(row.line, row.cells, outcome, document_id=document_id)


def _failed(row: ManifestRow, problem: RowProblem, detail: str) -> RowResult:
    return RowResult(row.line, row.cells, RowOutcome.FAILED, problem.value, detail)


def _infrastructure_problem(error: Exception) -> tuple[RowProblem, str]:
    if isinstance(error, StorageUnavailable):
        return RowProblem.STORAGE_UNAVAILABLE, str(error)
    if isinstance(error, StorageError):
        return RowProblem.STORAGE_ERROR, str(error)
    if isinstance(error, AuditError):
        return RowProblem.AUDIT_UNAVAILABLE, str(error) or error.public_message
    if isinstance(error, SQLAlchemyError):
        return RowProblem.DATABASE_ERROR, f"database error: {type(error).__name__}"
    return RowProblem.STORAGE_ERROR, f"cannot spool the file: {error}"


# The report -----------------------------------------------------------------------------

# Cells starting with these are formulas to spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# C0 controls but tab, line feed and carriage return (which CSV quotes), and DEL.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def write_report(path: Path, results: Sequence[RowResult]) -> None:
    """Write the rows not stored, with ``reason`` and ``detail``, as CSV to ``path``
    (created mode 0600, replaced atomically). Raises OSError if it cannot be written."""

    def safe(cell: str) -> str:
        # SECURITY: the report is opened in spreadsheets; a cell from the manifest must
        # not become a formula there. A NUL or other control character (the likely
        # reason the row was refused) is shown as U+FFFD: some programs stop reading a
        # file at a NUL.
        cell = _CONTROL.sub("\ufffd", cell)
        return "'" + cell if cell.startswith(_FORMULA_START) else cell

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for result in sorted(results, key=lambda r: r.line):
        writer.writerow(
            [
                str(result.line),
                *(safe(c) for c in result.cells),
                result.reason or "",
                safe(result.detail or ""),
            ]
        )
    # SECURITY: the report names students and their records: readable by its owner only.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(out.getvalue())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def default_report_path(manifest_path: Path) -> Path:
    """``MANIFEST.rejected.csv`` beside the manifest (``batch.csv`` → ``batch.rejected.csv``)."""
    return manifest_path.with_name(f"{manifest_path.stem}.rejected.csv")
