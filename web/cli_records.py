"""``satchel student``, ``satchel grant`` and ``satchel demo``: folder work from a shell."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time

import click
from flask.cli import with_appcontext

from folders.demo import load_demo
from folders.errors import InvalidInput
from folders.grants import GrantStatus, parse_scope
from web.cli_support import reports_errors, runtime

AS_OPTION = click.option(
    "--as",
    "as_email",
    required=True,
    metavar="EMAIL",
    help="The registrar account this is done as (recorded in the audit log).",
)


@click.command()
@with_appcontext
@reports_errors
def demo() -> None:
    """Load a demo school with students, guardians, documents and grants; print the logins."""
    report = load_demo(runtime())
    click.echo("Demo school loaded: Maple Grove Elementary (demo)")
    click.echo(f"  {len(report.students)} students, {report.documents} documents")
    for line in report.students:
        click.echo(f"  student {line}")
    click.echo("\nLogins (shown once; change them with `satchel user passwd`):")
    for role, email, password in report.logins:
        click.echo(f"  {role:<11} {email:<34} {password}")


@click.group()
def student() -> None:
    """Find and add students."""


@student.command("add")
@click.argument("district_id")
@click.option("--given", "given_name", required=True, help="Given (first) name.")
@click.option("--family", "family_name", required=True, help="Family (last) name.")
@click.option("--birth-date", type=click.DateTime(["%Y-%m-%d"]), help="YYYY-MM-DD.")
@click.option("--grade", help="Grade level, e.g. K, 3, 11.")
@click.option("--school", "school_code", help="School code (must exist).")
@AS_OPTION
@with_appcontext
@reports_errors
def student_add(
    district_id: str,
    given_name: str,
    family_name: str,
    birth_date: datetime | None,
    grade: str | None,
    school_code: str | None,
    as_email: str,
) -> None:
    """Add a student with DISTRICT_ID."""
    rt = runtime()
    info = rt.students.add_student(
        rt.accounts.acting_as(as_email),
        district_id,
        given_name,
        family_name,
        birth_date=birth_date.date() if birth_date else None,
        grade=grade,
        school_code=school_code,
    )
    click.echo(f"added student {info.district_id} {info.full_name} ({info.id})")


@student.command("find")
@click.argument("query", default="")
@click.option(
    "--page",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Which page of results, 25 students each.",
)
@AS_OPTION
@with_appcontext
@reports_errors
def student_find(query: str, page: int, as_email: str) -> None:
    """Search students by name or id (all students when QUERY is empty)."""
    rt = runtime()
    found = rt.students.find_students(rt.accounts.acting_as(as_email), query, page=page)
    click.echo(f"{'DISTRICT ID':<14} {'NAME':<32} {'GRADE':<6} ID")
    for s in found.items:
        click.echo(f"{s.district_id:<14} {s.full_name:<32} {s.grade or '':<6} {s.id}")
    click.echo(f"page {found.page} of {found.pages} ({found.total} students)")


@click.group()
def grant() -> None:
    """Share documents with guardians, list and revoke grants."""


def _end_of_day(day: datetime) -> datetime:
    return datetime.combine(day.date(), time(23, 59, 59), tzinfo=UTC)


@grant.command("add")
@click.argument("guardian_email")
@click.argument("student_id")
@click.option(
    "--scope", required=True, metavar="SCOPE", help="folder | category:NAME | document:ID"
)
@click.option(
    "--expires",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Last day of access, YYYY-MM-DD (access ends at 23:59:59 UTC).",
)
@click.option("--reason", help="Why this is shared (recorded).")
@AS_OPTION
@with_appcontext
@reports_errors
def grant_add(
    guardian_email: str,
    student_id: str,
    scope: str,
    expires: datetime | None,
    reason: str | None,
    as_email: str,
) -> None:
    """Give GUARDIAN_EMAIL access to STUDENT_ID's records (district id)."""
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    kind, category, document_id = parse_scope(scope)
    found = rt.students.get_by_district_id(actor, student_id)
    info = rt.grants.grant(
        actor,
        guardian_email,
        found.id,
        kind,
        category=category,
        document_id=document_id,
        expires_at=_end_of_day(expires) if expires else None,
        reason=reason,
    )
    until = f" until {info.expires_at:%Y-%m-%d}" if info.expires_at else ""
    click.echo(f"granted {info.guardian_email} {info.scope_label}{until} (grant {info.id})")


@grant.command("list")
@click.argument("student_id")
@click.option("--all", "include_inactive", is_flag=True, help="Include revoked and expired.")
@AS_OPTION
@with_appcontext
@reports_errors
def grant_list(student_id: str, include_inactive: bool, as_email: str) -> None:
    """List STUDENT_ID's grants (district id)."""
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    found = rt.students.get_by_district_id(actor, student_id)
    grants = rt.grants.list_for_student(actor, found.id, include_inactive=include_inactive)
    width = max(len(status.value) for status in GrantStatus)
    click.echo(f"{'GRANT ID':<36}  {'STATUS':<{width}} {'GUARDIAN':<32} {'EXPIRES':<10} SCOPE")
    for g in grants:
        expires = f"{g.expires_at:%Y-%m-%d}" if g.expires_at else "never"
        click.echo(
            f"{g.id!s:<36}  {g.status.value:<{width}} {g.guardian_email:<32} {expires:<10} "
            f"{g.scope_label}"
        )
    if not grants:
        click.echo("(no grants)")


@grant.command("revoke")
@click.argument("grant_id")
@click.option("--reason", required=True, help="Why access ends (recorded).")
@AS_OPTION
@with_appcontext
@reports_errors
def grant_revoke(grant_id: str, reason: str, as_email: str) -> None:
    """Revoke GRANT_ID; the guardian's next request is refused."""
    rt = runtime()
    try:
        parsed = uuid.UUID(grant_id)
    except ValueError:
        raise InvalidInput(f"Not a grant id: {grant_id!r}.") from None
    info = rt.grants.revoke(rt.accounts.acting_as(as_email), parsed, reason)
    click.echo(f"revoked grant {info.id} for {info.guardian_email}")
