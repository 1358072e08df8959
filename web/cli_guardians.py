"""``satchel guardian``: a student's guardians from a shell (list, link, restrict, unlink),
as the registrar's guardians page does them."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from folders.accounts import normalize_email
from folders.errors import NotFound
from folders.models import Relationship
from folders.students import GuardianInfo
from web.cli_records import AS_OPTION
from web.cli_support import counted, on_student, reports_errors


@click.group()
def guardian() -> None:
    """List, link, restrict and unlink a student's guardians."""


def _status(info: GuardianInfo) -> str:
    if info.ended_at is not None:
        return f"ended {info.ended_at:%Y-%m-%d}"
    status = "restricted" if info.restricted else "current"
    return status if info.account_active else f"{status}, account disabled"


@guardian.command("list")
@click.argument("student_id")
@AS_OPTION
@with_appcontext
@reports_errors
def guardian_list(student_id: str, as_email: str) -> None:
    """List every guardian ever linked to STUDENT_ID (district id)."""
    rt, actor, found = on_student(as_email, student_id)
    guardians = rt.students.list_guardians(actor, found.id)
    click.echo(f"{'GUARDIAN':<32} {'NAME':<24} {'RELATIONSHIP':<12} STATUS")
    for g in guardians:
        click.echo(f"{g.email:<32} {g.display_name:<24} {g.relationship.value:<12} {_status(g)}")
    click.echo(f"{counted(len(guardians), 'guardian')} of {found.full_name}")


@guardian.command("link")
@click.argument("guardian_email")
@click.argument("student_id")
@click.option(
    "--relationship",
    type=click.Choice([r.value for r in Relationship]),
    default=Relationship.PARENT.value,
    show_default=True,
    help="How they are related to the student.",
)
@AS_OPTION
@with_appcontext
@reports_errors
def guardian_link(guardian_email: str, student_id: str, relationship: str, as_email: str) -> None:
    """Link the guardian account GUARDIAN_EMAIL to STUDENT_ID (district id). Nothing is
    shared by linking: share with `satchel grant add`."""
    rt, actor, found = on_student(as_email, student_id)
    info = rt.students.link_guardian(actor, found.id, guardian_email, Relationship(relationship))
    click.echo(f"linked {info.email} to {found.full_name} as {info.relationship.value}")
    if info.restricted:
        click.echo("the link stays restricted: they see nothing of this student's records")


@guardian.command("restrict")
@click.argument("guardian_email")
@click.argument("student_id")
@click.option("--reason", required=True, help="Why, e.g. a court order (recorded).")
@AS_OPTION
@with_appcontext
@reports_errors
def guardian_restrict(guardian_email: str, student_id: str, reason: str, as_email: str) -> None:
    """Restrict GUARDIAN_EMAIL on STUDENT_ID (district id): from now on they see nothing
    of the student's records, whatever is shared with them."""
    rt, actor, found = on_student(as_email, student_id)
    info = rt.students.restrict_guardian(actor, found.id, guardian_email, reason)
    click.echo(f"restricted {info.email}: they see nothing of {found.full_name}'s records")


@guardian.command("unlink")
@click.argument("guardian_email")
@click.argument("student_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@AS_OPTION
@with_appcontext
@reports_errors
def guardian_unlink(guardian_email: str, student_id: str, yes: bool, as_email: str) -> None:
    """End GUARDIAN_EMAIL's link to STUDENT_ID (district id) and revoke the grants they
    hold on the student ("guardianship ended"). Linking them again gives none back."""
    rt, actor, found = on_student(as_email, student_id)
    email = normalize_email(guardian_email)
    linked = {g.email: g for g in rt.students.list_guardians(actor, found.id)}
    if email not in linked:
        raise NotFound(f"{email} is not a guardian of {found.full_name}.")
    ended_already = f"{email}'s link to {found.full_name} has ended already; nothing was changed"
    if linked[email].ended_at is not None:
        click.echo(ended_already)
        return
    if not yes:
        guardian_id = linked[email].guardian_id
        grants = rt.grants.list_for_student(actor, found.id)
        in_force = [g for g in grants if g.guardian_id == guardian_id]
        click.echo(f"Ending the link revokes {counted(len(in_force), 'grant')} in force:")
        for g in in_force:
            click.echo(f"  {g.id}  {g.scope_label}")
        click.confirm(f"End {email}'s link to {found.full_name}?", abort=True)
    if not rt.students.unlink_guardian(actor, found.id, email):
        click.echo(ended_already)
        return
    click.echo(
        f"unlinked {email} from {found.full_name}: they see nothing of the student's records, "
        "and the grants they held are revoked"
    )
