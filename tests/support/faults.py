"""Real failures to inject in tests (no mocks): the database itself refuses."""

from __future__ import annotations

from sqlalchemy import Engine, text


def break_audit_inserts(engine: Engine) -> None:
    """Make every INSERT into the audit table fail, as a full disk or lost grant would."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit storage unavailable'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit storage unavailable'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION audit_down()"
                )
            )
