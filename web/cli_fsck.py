"""``satchel fsck``: reconcile the object store with the metadata database.

Every run is recorded in the audit log as the operator (``store.fsck``, and for a
repair ``store.repair`` before and after deleting). Exit codes: 0 nothing wrong
(pending uploads are not problems; with ``--repair``, every problem found was
repaired), 1 problems remain or the check could not run (also when its audit event
could not be written, or a bulk ingest holds its lock; a repair then deletes nothing),
2 a usage error (also ``--repair`` with ``--grace-hours`` below 1 without
``--unsafe-short-grace``).
"""

from __future__ import annotations

import json
from datetime import timedelta

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from folders.actor import Actor
from folders.fsck import MIN_REPAIR_GRACE, Finding, FindingKind, FsckReport, RepairResult
from web.cli_support import counted, reports_errors, runtime

_LABELS = {
    FindingKind.MISSING_OBJECT: "MISSING",
    FindingKind.SIZE_MISMATCH: "SIZE",
    FindingKind.CORRUPT_OBJECT: "CORRUPT",
    FindingKind.KEY_UNAVAILABLE: "NOKEY",
    FindingKind.SHREDDED_OBJECT: "SHREDDED",
    FindingKind.ORPHAN_OBJECT: "ORPHAN",
    FindingKind.STALE_INTENT: "INTENT",
    FindingKind.PENDING: "PENDING",
}


@click.command()
@click.option(
    "--deep",
    is_flag=True,
    help="Also open every object as a download would: unwrap its data key, authenticate "
    "every segment and compare the SHA-256 (reads the whole bucket).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Delete orphan objects and stale ingest intents older than the grace period. "
    "Objects a version references are never touched.",
)
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    default=24,
    show_default=True,
    metavar="HOURS",
    help="Unreferenced objects younger than this are uploads in progress, not orphans. "
    "At least 1 with --repair.",
)
@click.option(
    "--unsafe-short-grace",
    is_flag=True,
    help="Let --repair use --grace-hours below 1. Only while Satchel is stopped (as during "
    "a restore): an upload committed between the check and the delete loses its object.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
@reports_errors
def fsck(
    deep: bool, repair: bool, grace_hours: float, unsafe_short_grace: bool, as_json: bool
) -> None:
    """Check that every document version has its object, of the right size (and with
    --deep, authentic), and that the store holds nothing the database does not know.

    Exits 0 when nothing is wrong, 1 when problems remain, 2 for a usage error.
    """
    grace = timedelta(hours=grace_hours)
    if repair and grace < MIN_REPAIR_GRACE and not unsafe_short_grace:
        # Refused before anything runs: web uploads take no lock, so a repair with a
        # short grace could delete the object of one that commits while it runs.
        minimum = MIN_REPAIR_GRACE.total_seconds() / 3600
        raise click.UsageError(
            f"--repair needs --grace-hours of at least {minimum:g} (given {grace_hours:g}); "
            "below that, only with --unsafe-short-grace while Satchel is stopped."
        )
    rt = runtime()
    checker = rt.fsck
    actor = Actor.operator()
    with tqdm(unit="object", desc="authenticating", disable=None if deep else True) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = checker.check(actor, deep=deep, grace=grace, progress=advance)
    repaired = (
        checker.repair(actor, report, unsafe_short_grace=unsafe_short_grace) if repair else None
    )
    remaining = report.remaining(repaired)
    if as_json:
        click.echo(json.dumps(_report_json(report, repaired, remaining), indent=2))
    else:
        _print(report, repaired, remaining, rt.store.description)
    if remaining:
        raise SystemExit(1)


def _print(
    report: FsckReport, repaired: RepairResult | None, remaining: tuple[Finding, ...], store: str
) -> None:
    checked = (
        f"checked {counted(report.versions, 'version')} ({report.shredded} shredded) against "
        f"{counted(report.objects, 'object')} in {store} and "
        f"{counted(report.intents, 'ingest intent')}"
    )
    if report.deep:
        checked += f"; {counted(report.authenticated, 'object')} authenticated"
    click.echo(checked)
    for finding in report.findings:
        click.echo(f"{_LABELS[finding.kind]:<9}{finding.key}: {finding.detail}")
    if repaired is not None:
        for key in repaired.deleted:
            click.echo(f"deleted  {key}")
        for finding in repaired.kept:
            click.echo(f"kept     {finding.key}: referenced or too recent when checked again")
    if remaining:
        repairable = sum(1 for f in remaining if f.repairable)
        hint = f" ({repairable} fixed by --repair)" if repairable and repaired is None else ""
        click.echo(f"{counted(len(remaining), 'problem')}{hint}")
    else:
        click.echo("OK: no problems")


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "kind": finding.kind.value,
        "key": finding.key,
        "detail": finding.detail,
        "version_id": None if finding.version_id is None else str(finding.version_id),
        "document_id": None if finding.document_id is None else str(finding.document_id),
        "problem": finding.is_problem,
        "repairable": finding.repairable,
    }


def _report_json(
    report: FsckReport, repaired: RepairResult | None, remaining: tuple[Finding, ...]
) -> dict[str, object]:
    return {
        "ok": not remaining,
        "checked_at": report.checked_at.isoformat(),
        "deep": report.deep,
        "grace_hours": report.grace.total_seconds() / 3600,
        "versions": report.versions,
        "shredded": report.shredded,
        "objects": report.objects,
        "intents": report.intents,
        "authenticated": report.authenticated,
        "findings": [_finding_json(f) for f in report.findings],
        "repair": None
        if repaired is None
        else {
            "deleted": list(repaired.deleted),
            "kept": [_finding_json(f) for f in repaired.kept],
        },
        "remaining_problems": len(remaining),
    }
