"""audit log: events, signed checkpoints, sequence counter, append-only triggers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_APPEND_ONLY = ("audit_events", "audit_checkpoints")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("sequence", _SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=True),
        sa.Column("actor_role", sa.String(length=32), nullable=True),
        sa.Column("actor_email", sa.String(length=254), nullable=True),
        sa.Column("student_id", sa.String(length=64), nullable=True),
        sa.Column("document_id", sa.String(length=64), nullable=True),
        sa.Column("version_id", sa.String(length=64), nullable=True),
        sa.Column("grant_id", sa.String(length=64), nullable=True),
        sa.Column("purpose", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_audit_events")),
    )
    for name, columns in (
        ("ix_audit_events_student", ["student_id", "sequence"]),
        ("ix_audit_events_actor_email", ["actor_email", "sequence"]),
        ("ix_audit_events_actor_id", ["actor_id", "sequence"]),
        ("ix_audit_events_document", ["document_id", "sequence"]),
        ("ix_audit_events_action", ["action", "sequence"]),
        ("ix_audit_events_recorded_at", ["recorded_at"]),
    ):
        op.create_index(name, "audit_events", columns, unique=False)
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", _SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_audit_checkpoints")),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # Event 1 names 32 zero bytes as its predecessor (GENESIS_HASH in audit/events.py).
    op.bulk_insert(head, [{"id": 1, "last_sequence": 0, "last_leaf_hash": bytes(32)}])

    # SECURITY: the database itself refuses to change or remove audit history, so no
    # application bug can, and a DBA has to drop or disable these triggers first (which
    # `satchel audit verify` then still catches through the hashes and signatures).
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _postgresql_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit log is append-only: % on % is not allowed',
                TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in (*_APPEND_ONLY, "audit_head"):
        # audit_head is updated on every append; only deleting or truncating it is refused.
        row_ops = "DELETE" if table == "audit_head" else "UPDATE OR DELETE"
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE {row_ops} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_reject_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()"
        )
        # SECURITY: ENABLE ALWAYS makes the triggers fire under
        # session_replication_role = replica too, which would skip ordinary triggers.
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")


def _sqlite_triggers() -> None:
    # SQLite has no TRUNCATE; its DELETE-without-WHERE shortcut is off for tables
    # with DELETE triggers, so the row trigger covers it.
    for table in (*_APPEND_ONLY, "audit_head"):
        operations = ("DELETE",) if table == "audit_head" else ("UPDATE", "DELETE")
        for operation in operations:
            op.execute(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: {operation} on "
                f"{table} is not allowed'); END"
            )


def downgrade() -> None:
    # SECURITY: a schema downgrade must not be a way to erase audit history.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one():
        raise RuntimeError(
            "refusing to downgrade: audit_events holds events, and dropping the audit "
            "log would destroy the record of disclosures"
        )
    for table in ("audit_head", *_APPEND_ONLY):
        op.drop_table(table)  # its triggers and indexes go with it
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_reject_change()")
