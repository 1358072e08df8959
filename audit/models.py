"""SQL schema of the audit log, as SQLAlchemy 2 typed models.

The tables are created only by the Alembic migration ``0002_audit_log`` (with the
append-only triggers, which models cannot express); these classes must match it (a test
compares the two). The audit log keeps its own metadata so that ``audit`` never imports
``folders``.

- ``audit_events``: one row per event. ``entry`` holds the exact canonical bytes that
  are hashed; ``leaf_hash`` is their RFC 9162 leaf hash; every other column is a
  queryable copy of a field of the entry, which verification cross-checks.
- ``audit_checkpoints``: every signed checkpoint (its note, byte for byte).
- ``audit_head``: one row holding the last sequence number handed out and that event's
  leaf hash. Appends update it first, which serialises them on every backend (a row lock
  on PostgreSQL, the write lock on SQLite) and so keeps sequence numbers gapless; it is
  the only audit row that is ever updated.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "CHECKPOINTS",
    "EVENTS",
    "HEAD",
    "AuditBase",
    "AuditCheckpointRow",
    "AuditEventRow",
    "AuditHeadRow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class AuditBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Satchel stores aware UTC timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only makes an INTEGER PRIMARY KEY the table's rowid (the fast path for lookups
# and range scans by sequence); PostgreSQL needs 64 bits for a log that lives for decades.
_SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")


class AuditEventRow(AuditBase):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_student", "student_id", "sequence"),
        Index("ix_audit_events_actor_email", "actor_email", "sequence"),
        Index("ix_audit_events_actor_id", "actor_id", "sequence"),
        Index("ix_audit_events_document", "document_id", "sequence"),
        Index("ix_audit_events_action", "action", "sequence"),
        Index("ix_audit_events_recorded_at", "recorded_at"),
    )

    sequence: Mapped[int] = mapped_column(_SEQUENCE, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_role: Mapped[str | None] = mapped_column(String(32))
    actor_email: Mapped[str | None] = mapped_column(String(254))
    student_id: Mapped[str | None] = mapped_column(String(64))
    document_id: Mapped[str | None] = mapped_column(String(64))
    version_id: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpointRow(AuditBase):
    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(_SEQUENCE, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[bytes] = mapped_column(LargeBinary)


class AuditHeadRow(AuditBase):
    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    last_leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


def _table(model: type[AuditBase]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# Core tables: the log reads and writes with Core statements, which cost a fraction of
# the ORM's unit of work per append.
EVENTS = _table(AuditEventRow)
CHECKPOINTS = _table(AuditCheckpointRow)
HEAD = _table(AuditHeadRow)
