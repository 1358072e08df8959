"""Real failures to inject in tests (no mocks): the database itself refuses."""

from __future__ import annotations

from sqlalchemy import Engine, text


def break_audit_inserts(engine: Engine, detail_like: str | None = None) -> None:
    """Make every INSERT into the audit table fail, as a full disk or lost grant would;
    with ``detail_like`` (a LIKE pattern), only those of events whose detail matches."""
    condition = "TRUE"
    if detail_like is not None:
        condition = "NEW.detail LIKE '" + detail_like.replace("'", "''") + "'"
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(
                text(
                    f"CREATE TRIGGER audit_down BEFORE INSERT ON audit_events WHEN {condition} "
                    "BEGIN SELECT RAISE(ABORT, 'audit storage unavailable'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF {condition} THEN RAISE EXCEPTION 'audit storage unavailable'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION audit_down()"
                )
            )


def restore_audit_inserts(engine: Engine) -> None:
    """Undo :func:`break_audit_inserts`."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER audit_down"))
        else:
            connection.execute(text("DROP TRIGGER audit_down ON audit_events"))
            connection.execute(text("DROP FUNCTION audit_down()"))
