"""``satchel audit``: verify, seal, prove and export the audit log (compliance staff).

Formats are specified in ``docs/audit-log.md``, so a third party can check the output
without Satchel. Exit codes: 0 success (``verify``: the log is intact), 1 a failed check
or operation, 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from audit.checkpoint import SignedCheckpoint
from audit.errors import AuditError
from audit.events import Action, Outcome, format_time
from audit.export import ExportFormat, export_events
from audit.log import AuditLog, EventFilter
from audit.verify import VerifyReport
from folders.actor import Actor
from folders.auditing import event_for
from web.cli_support import DATE, counted, reports_errors, runtime


@click.group("audit")
def audit_cli() -> None:
    """Verify, seal, prove and export the audit log."""


@audit_cli.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=lambda: os.cpu_count() or 1,
    metavar="N",
    show_default="the number of CPUs",
    help="Processes, this one included, that check a log of 524,288 events or more.",
)
@with_appcontext
@reports_errors
def verify(as_json: bool, jobs: int) -> None:
    """Recompute the hash chain, Merkle tree and checkpoint signatures.

    Checks every event in SQL against the checkpoints in SQL and in the object store,
    with a progress bar on a terminal. Exits 0 when the log is intact, otherwise 1,
    naming the first bad sequence number and what is wrong: edited, deleted, inserted,
    reordered, truncated, bad signature.
    """
    log = runtime().audit_log
    with tqdm(unit="event", unit_scale=True, desc="verifying", disable=None) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = log.verify(workers=jobs, progress=advance)
        if bar.total:
            bar.update(report.events_checked - bar.n)
    if as_json:
        click.echo(json.dumps(_report_json(report), indent=2))
    else:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        if report.ok:
            click.echo(f"OK    {report.detail}")
        else:
            problem = (report.problem or "").replace("_", " ")
            click.echo(f"FAIL  sequence {report.first_bad_sequence}: {problem}: {report.detail}")
    verdict = (
        f"intact: {report.detail}"
        if report.ok
        else f"failed at sequence {report.first_bad_sequence} ({report.problem}): {report.detail}"
    )
    outcome = Outcome.ALLOWED if report.ok else Outcome.ERROR
    try:
        log.record(event_for(Actor.operator(), Action.AUDIT_VERIFY, outcome, detail=verdict[:4000]))
    except AuditError as e:
        # The verdict above stands either way; a damaged log may refuse new events.
        click.echo(f"warning: the verification could not be recorded: {e}", err=True)
    if not report.ok:
        raise SystemExit(1)


@audit_cli.command("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoint as JSON.")
@with_appcontext
@reports_errors
def checkpoint(as_json: bool) -> None:
    """Seal every event in a signed checkpoint if needed, and print the latest.

    Prints the signed note (C2SP checkpoint format) as stored in SQL and in the object
    store under audit/checkpoints/<tree size>.note.
    """
    signed = runtime().audit_log.checkpoint()
    if as_json:
        click.echo(json.dumps(_checkpoint_json(signed), indent=2))
    else:
        click.echo(signed.note.decode("utf-8"), nl=False)


@audit_cli.command("prove")
@click.argument("sequence", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the proof as JSON.")
@with_appcontext
@reports_errors
def prove(sequence: int, as_json: bool) -> None:
    """Print event SEQUENCE, its leaf hash and an inclusion proof.

    The proof is against the latest signed checkpoint (made now if the event is not yet
    sealed), so anyone holding the public key (`satchel audit pubkey`) can check it.
    """
    log = runtime().audit_log
    # SECURITY: recorded before the event is shown, like any other read of the trail.
    log.record(event_for(Actor.operator(), Action.AUDIT_QUERY, detail=f"proof of event {sequence}"))
    proof = log.prove(sequence)
    checkpoint = proof.checkpoint.checkpoint
    entry = proof.event.entry.decode("utf-8")
    path = [h.hex() for h in proof.hashes]
    note = proof.checkpoint.note.decode("utf-8")
    if as_json:
        document = {
            "sequence": proof.event.sequence,
            "leaf_index": proof.leaf_index,
            "entry": entry,
            "leaf_hash": proof.event.leaf_hash.hex(),
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root_hash.hex(),
            "inclusion_proof": path,
            "checkpoint": note,
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    click.echo(f"event        {proof.event.sequence} (leaf index {proof.leaf_index})")
    click.echo(f"entry        {entry}")
    click.echo(f"leaf hash    {proof.event.leaf_hash.hex()}")
    click.echo(f"tree size    {checkpoint.tree_size}")
    click.echo(f"root hash    {checkpoint.root_hash.hex()}")
    for position, value in enumerate(path):
        click.echo(f"proof[{position:2d}]    {value}")
    click.echo("checkpoint")
    click.echo(note, nl=False)


@audit_cli.command("pubkey")
@with_appcontext
@reports_errors
def pubkey() -> None:
    """Print the checkpoint verification key (PEM SubjectPublicKeyInfo, Ed25519)."""
    click.echo(runtime().audit_log.public_key_pem().decode("ascii"), nl=False)


@audit_cli.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in ExportFormat]),
    required=True,
    help="csv for spreadsheets; jsonl for the exact signed entries.",
)
@click.option(
    "--student",
    "student_id",
    metavar="ID",
    help="Only events about this student: a district id, or Satchel's id of the student.",
)
@click.option("--actor", "actor_email", metavar="EMAIL", help="Only events by this email address.")
@click.option(
    "--action",
    type=click.Choice([a.value for a in Action]),
    metavar="ACTION",
    help="Only events of this action, e.g. access.denied (docs/audit-log.md lists them).",
)
@click.option(
    "--outcome",
    type=click.Choice([o.value for o in Outcome]),
    help="Only events with this outcome (denied: every refusal).",
)
@click.option("--since", type=DATE, help="From this UTC day, inclusive.")
@click.option("--until", type=DATE, help="Up to this UTC day, inclusive.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
@with_appcontext
@reports_errors
def export(
    fmt: str,
    student_id: str | None,
    actor_email: str | None,
    action: str | None,
    outcome: str | None,
    since: date | None,
    until: date | None,
    output: Path | None,
) -> None:
    """Export audit events, oldest first (formats: docs/audit-log.md)."""
    if until is not None and until == date.max:  # it has no next midnight
        raise click.BadParameter("must be before 9999-12-31.", param_hint="'--until'")
    if since is not None and until is not None and until < since:  # both days count
        raise click.BadParameter(f"{until} is before --since {since}.", param_hint="'--until'")
    where = EventFilter(
        actor_email=actor_email.strip().lower() if actor_email else None,
        student_id=_student_filter(student_id),
        action=Action(action) if action else None,
        outcome=Outcome(outcome) if outcome else None,
        since=_midnight(since) if since else None,
        until=_midnight(until + timedelta(days=1)) if until else None,
    )
    log = runtime().audit_log
    _record_export(log, fmt, where)
    if output is None:
        count = export_events(log.events(where), sys.stdout.buffer, ExportFormat(fmt))
        sys.stdout.buffer.flush()
    else:
        with output.open("wb") as handle:
            count = export_events(log.events(where), handle, ExportFormat(fmt))
        click.echo(f"exported {counted(count, 'event')} to {output}", err=True)


def _midnight(day: date) -> datetime:
    """The UTC midnight that starts ``day``."""
    return datetime.combine(day, time(), tzinfo=UTC)


def _record_export(log: AuditLog, fmt: str, where: EventFilter) -> None:
    """Record the export before any event leaves (fail closed)."""
    filters = [f"format={fmt}"]
    for name in ("student_id", "actor_email", "action", "outcome", "since", "until"):
        value = getattr(where, name)
        if value is not None:
            filters.append(f"{name}={format_time(value) if name in ('since', 'until') else value}")
    student = _uuid_or_none(where.student_id)
    log.record(
        event_for(
            Actor.operator(), Action.AUDIT_EXPORT, student_id=student, detail=" ".join(filters)
        )
    )


def _student_filter(value: str | None) -> str | None:
    """Satchel's id of the student named by ``value``: that id itself, or a district id
    (NotFound if no student has it); None without a value."""
    text = (value or "").strip()
    if not text:
        return None
    parsed = _uuid_or_none(text)
    if parsed is not None:
        return str(parsed)
    return str(runtime().disclosures.find_student(Actor.operator(), text).id)


def _uuid_or_none(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if text else None
    except ValueError:
        return None


def _checkpoint_json(signed: SignedCheckpoint) -> dict[str, object]:
    checkpoint = signed.checkpoint
    return {
        "origin": checkpoint.origin,
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root_hash.hex(),
        "timestamp": format_time(checkpoint.timestamp),
        "note": signed.note.decode("utf-8"),
    }


def _report_json(report: VerifyReport) -> dict[str, object]:
    latest = report.latest_checkpoint
    return {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "checkpoints_checked": report.checkpoints_checked,
        "first_bad_sequence": report.first_bad_sequence,
        "problem": None if report.problem is None else report.problem.value,
        "detail": report.detail,
        "latest_checkpoint": None
        if latest is None
        else {
            "tree_size": latest.tree_size,
            "root_hash": latest.root_hash.hex(),
            "timestamp": format_time(latest.timestamp),
        },
        "warnings": list(report.warnings),
    }
