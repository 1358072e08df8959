"""SQL schema of the cumulative folder (DESIGN §2), as SQLAlchemy 2 typed models.

The schema itself is created and changed only by the Alembic migrations in
``folders/migrations``; these classes must match them (a test compares the two).
Vocabularies are stored as strings with CHECK constraints so SQLite and PostgreSQL
behave the same. All timestamps are stored and returned in UTC.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The audit log's timestamp type and constraint naming are the schema's conventions too.
from audit.models import NAMING_CONVENTION, UTCDateTime
from folders.categories import Category


def _vocabulary(enum: type[StrEnum], name: str, length: int = 32) -> Enum:
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Role(StrEnum):
    REGISTRAR = "registrar"
    GUARDIAN = "guardian"
    COMPLIANCE = "compliance"
    ADMIN = "admin"


class StudentStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    TRANSFERRED = "transferred"
    GRADUATED = "graduated"


class Relationship(StrEnum):
    PARENT = "parent"
    GUARDIAN = "guardian"
    RELATIVE = "relative"
    OTHER = "other"


class GrantScope(StrEnum):
    DOCUMENT = "document"
    CATEGORY = "category"
    FOLDER = "folder"


# A count or byte size that may pass 2**31 - 1: 64-bit on PostgreSQL, whose INTEGER is
# 32-bit. SQLite's INTEGER holds 64 bits already, and only INTEGER makes a primary key
# the table's rowid, so it stays INTEGER there (migration 0007).
_BIG_INTEGER = BigInteger().with_variant(Integer(), "sqlite")


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


class School(Base):
    __tablename__ = "schools"

    id: Mapped[uuid.UUID] = _uuid_pk()
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    source_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Student(Base):
    __tablename__ = "students"

    id: Mapped[uuid.UUID] = _uuid_pk()
    district_id: Mapped[str] = mapped_column(String(64), unique=True)
    state_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    source_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    given_name: Mapped[str] = mapped_column(String(100))
    middle_name: Mapped[str | None] = mapped_column(String(100))
    family_name: Mapped[str] = mapped_column(String(100), index=True)
    birth_date: Mapped[date | None] = mapped_column(Date)
    grade: Mapped[str | None] = mapped_column(String(16))
    school_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("schools.id"))
    status: Mapped[StudentStatus] = mapped_column(
        _vocabulary(StudentStatus, "student_status"), default=StudentStatus.ACTIVE
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _uuid_pk()
    email: Mapped[str] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_vocabulary(Role, "user_role"))
    active: Mapped[bool] = mapped_column(default=True)
    # Raised when the account is enabled again and whenever its password is set; a
    # browser session counts only while it carries the epoch of its login (0008).
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    source_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a guardian last opened their list of shared documents (marks what is new).
    last_seen_shared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Guardianship(Base):
    """A guardian's link to a student. A restricted guardian sees nothing of that student.

    Rows are never deleted: a removed link keeps its history with ``ended_at`` set.
    """

    __tablename__ = "guardianships"
    __table_args__ = (
        UniqueConstraint("guardian_id", "student_id"),
        CheckConstraint(
            "restricted = false OR restriction_reason IS NOT NULL", name="restriction_has_reason"
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    guardian_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    student_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("students.id"), index=True)
    relationship: Mapped[Relationship] = mapped_column(_vocabulary(Relationship, "relationship"))
    restricted: Mapped[bool] = mapped_column(default=False)
    restriction_reason: Mapped[str | None] = mapped_column(Text)
    restriction_document_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("documents.id"))
    restricted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[uuid.UUID] = _uuid_pk()
    student_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("students.id"), index=True)
    category: Mapped[Category] = mapped_column(_vocabulary(Category, "category"))
    title: Mapped[str] = mapped_column(String(200))
    school_year: Mapped[str | None] = mapped_column(String(9))
    effective_date: Mapped[date | None] = mapped_column(Date)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ingest_key: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)


class DocumentVersion(Base):
    """One immutable stored file. A correction is a new row with the next ``number``.

    ``wrapped_dek`` is the data key wrapped by keyring version ``key_version``; key
    rotation rewrites only these three key columns. A NULL ``wrapped_dek`` means the
    version was crypto-shredded.
    """

    __tablename__ = "document_versions"
    __table_args__ = (UniqueConstraint("document_id", "number"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(255), unique=True)
    size: Mapped[int] = mapped_column(_BIG_INTEGER)  # bytes: a file may pass 2 GiB
    stored_size: Mapped[int] = mapped_column(_BIG_INTEGER)
    plaintext_sha256: Mapped[str] = mapped_column(String(64))
    mime_type: Mapped[str] = mapped_column(String(64))
    page_count: Mapped[int] = mapped_column(Integer)
    original_filename: Mapped[str] = mapped_column(String(255))
    format_version: Mapped[int] = mapped_column(Integer)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer, index=True)
    uploaded_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Grant(Base):
    """Permission for one guardian to see a document, a category or a student's folder.

    Folder and category grants cover documents added later. Revocation is a state change
    (who, when, why); rows are kept for the record of disclosures.
    """

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint(
            "(scope = 'document' AND document_id IS NOT NULL AND category IS NULL)"
            " OR (scope = 'category' AND category IS NOT NULL AND document_id IS NULL)"
            " OR (scope = 'folder' AND document_id IS NULL AND category IS NULL)",
            name="scope_target",
        ),
        CheckConstraint("(revoked_at IS NULL) = (revoked_by IS NULL)", name="revocation_complete"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    guardian_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    student_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("students.id"), index=True)
    scope: Mapped[GrantScope] = mapped_column(_vocabulary(GrantScope, "grant_scope"))
    document_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("documents.id"))
    category: Mapped[Category | None] = mapped_column(_vocabulary(Category, "grant_category"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    granted_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoke_reason: Mapped[str | None] = mapped_column(Text)


# Login throttling and one-time password-set links live in SQL, not in a process, so
# every gunicorn worker sees the same failures and the same tokens.


class AttemptOutcome(StrEnum):
    # PENDING counts as a failure until the password check says otherwise, so parallel
    # guesses in several workers cannot slip past the limit together.
    PENDING = "pending"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    THROTTLED = "throttled"


class LoginAttempt(Base):
    """One login attempt: the email typed (lower-cased) and the client address."""

    __tablename__ = "login_attempts"

    # Every attempt takes the next id, pruned or not: 2**31 is within reach of a
    # long-running login form under attack.
    id: Mapped[int] = mapped_column(_BIG_INTEGER, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(254), index=True)
    client_address: Mapped[str] = mapped_column(String(64), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[AttemptOutcome] = mapped_column(
        _vocabulary(AttemptOutcome, "attempt_outcome", length=16)
    )


class PasswordToken(Base):
    """A one-time link to set a password. Only the SHA-256 of the token is stored."""

    __tablename__ = "password_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IngestIntent(Base):
    """An object a bulk ingest is about to put (``docs/bulk-ingest.md``).

    The row is committed before the object is put and deleted once the object's version
    is committed (or the object is deleted), so after a crash the rows left name every
    object that may be an orphan.
    """

    __tablename__ = "ingest_intents"

    object_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class UploadForm(Base):
    """An upload form that was sent: its random id, claimed before any of its files is
    stored, so that the same form sent again stores nothing (``folders/forms.py``)."""

    __tablename__ = "upload_forms"

    form_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
