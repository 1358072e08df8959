"""``satchel student``, ``satchel grant`` and ``satchel demo``: folder work from a shell."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from typing import cast

import click
from flask.cli import with_appcontext

from folders.categories import Category
from folders.demo import load_demo
from folders.errors import InvalidInput
from folders.grants import GrantStatus, parse_scope
from folders.models import GrantScope
from web.cli_support import DATE, IdType, counted, on_student, reports_errors, runtime

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
    click.echo(
        f"  {counted(len(report.students), 'student')}, {counted(report.documents, 'document')}"
    )
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
@click.option("--given", "given_name", required=True, metavar="NAME", help="Given (first) name.")
@click.option("--family", "family_name", required=True, metavar="NAME", help="Family (last) name.")
@click.option("--birth-date", type=DATE, help="Date of birth.")
@click.option("--grade", metavar="GRADE", help="Grade level, e.g. K, 3, 11.")
@click.option("--school", "school_code", metavar="CODE", help="School code (must exist).")
@AS_OPTION
@with_appcontext
@reports_errors
def student_add(
    district_id: str,
    given_name: str,
    family_name: str,
    birth_date: date | None,
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
        birth_date=birth_date,
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
    metavar="N",
    help="Which page of results, 25 students each; one past the last shows the last.",
)
@AS_OPTION
@with_appcontext
@reports_errors
def student_find(query: str, page: int, as_email: str) -> None:
    """Search students by name or id (all students when QUERY is empty)."""
    rt = runtime()
    found = rt.students.find_students(rt.accounts.acting_as(as_email), query, page=page)
    if found.page < page:  # the service shows the last page for one past it
        click.echo(f"page {page} does not exist; showing the last page, {found.page}", err=True)
    click.echo(f"{'DISTRICT ID':<14} {'NAME':<32} {'GRADE':<6} ID")
    for s in found.items:
        click.echo(f"{s.district_id:<14} {s.full_name:<32} {s.grade or '':<6} {s.id}")
    click.echo(f"page {found.page} of {found.pages} ({counted(found.total, 'student')})")


@click.group()
def document() -> None:
    """List a student's documents and their versions (the ids other commands take)."""


@document.command("list")
@click.argument("student_id")
@AS_OPTION
@with_appcontext
@reports_errors
def document_list(student_id: str, as_email: str) -> None:
    """List the documents of STUDENT_ID (district id): document ids for
    `grant add --scope document:ID`, version ids for `keys shred`. Audited as a folder
    view."""
    rt, actor, found = on_student(as_email, student_id)
    documents = rt.documents.list_folder(actor, found.id)
    click.echo(f"{'DOCUMENT ID':<36}  {'CATEGORY':<18} TITLE")
    for d in documents:
        click.echo(f"{d.id!s:<36}  {d.category.value:<18} {d.title}")
        for v in d.versions:
            state = "destroyed" if v.shredded else f"{v.filename}, {v.uploaded_at:%Y-%m-%d}"
            current = " (current)" if v is d.current else ""
            click.echo(f"  version {v.number}{current}  {v.id}  {state}")
    click.echo(f"{counted(len(documents), 'document')} in the folder of {found.full_name}")


@click.group()
def grant() -> None:
    """Share documents with guardians, list and revoke grants."""


Scope = tuple[GrantScope, Category | None, uuid.UUID | None]


class ScopeType(click.ParamType[Scope]):
    """``folder``, ``category:NAME`` or ``document:ID``, parsed by the domain's
    :func:`parse_scope`; a malformed one is a usage error with its message."""

    name = "scope"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SCOPE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Scope:
        if isinstance(value, tuple):
            return cast(Scope, value)  # converted already
        try:
            return parse_scope(str(value))
        except InvalidInput as e:
            self.fail(str(e), param, ctx)


def _end_of_day(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


@grant.command("add")
@click.argument("guardian_email")
@click.argument("student_id")
@click.option(
    "--scope",
    required=True,
    type=ScopeType(),
    help="What is shared: folder, category:NAME or document:ID.",
)
@click.option("--expires", type=DATE, help="Last day of access (access ends at 23:59:59 UTC).")
@click.option("--reason", help="Why this is shared (recorded).")
@AS_OPTION
@with_appcontext
@reports_errors
def grant_add(
    guardian_email: str,
    student_id: str,
    scope: Scope,
    expires: date | None,
    reason: str | None,
    as_email: str,
) -> None:
    """Give GUARDIAN_EMAIL access to STUDENT_ID's records (district id)."""
    rt, actor, found = on_student(as_email, student_id)
    kind, category, document_id = scope
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
    rt, actor, found = on_student(as_email, student_id)
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
@click.argument("grant_id", type=IdType("grant id"))
@click.option("--reason", required=True, help="Why access ends (recorded).")
@AS_OPTION
@with_appcontext
@reports_errors
def grant_revoke(grant_id: uuid.UUID, reason: str, as_email: str) -> None:
    """Revoke GRANT_ID; the guardian's next request is refused."""
    rt = runtime()
    info = rt.grants.revoke(rt.accounts.acting_as(as_email), grant_id, reason)
    click.echo(f"revoked grant {info.id} for {info.guardian_email}")
