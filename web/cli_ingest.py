"""``satchel ingest`` (bulk ingest of scanned folders) and ``satchel folder export``."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from folders.bulk import (
    BulkIngest,
    RowOutcome,
    RowResult,
    default_report_path,
    parse_manifest,
    write_report,
)
from folders.export import FolderExport
from web.cli_records import AS_OPTION
from web.cli_support import counted, reports_errors, runtime


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--workers",
    type=click.IntRange(1, 12),
    default=4,
    show_default=True,
    metavar="N",
    help="Files stored in parallel.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="CSV of the rows not stored, with the reason (default: MANIFEST.rejected.csv "
    "beside the manifest).",
)
@AS_OPTION
@with_appcontext
@reports_errors
def ingest(manifest: Path, workers: int, report: Path | None, as_email: str) -> None:
    """Store the scanned documents listed in MANIFEST (CSV).

    Columns: student_id (district id), category, title, school_year, document_date
    (YYYY-MM-DD), path (relative to the manifest). Safe to run again after an
    interruption: rows already stored are skipped. Exits 0 only if every row is stored
    and the report is written.
    """
    report_path = report or default_report_path(manifest)
    # Checked before anything is stored; a full disk can still refuse it at the end.
    if report_path.is_dir():
        raise click.BadParameter(f"{report_path} is a directory", param_hint="'--report'")
    if not report_path.parent.is_dir():
        raise click.BadParameter(
            f"{report_path.parent} is not a directory", param_hint="'--report'"
        )
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    try:
        data = manifest.read_bytes()
    except OSError as e:
        raise click.ClickException(f"cannot read {manifest}: {e.strerror or e}") from e
    parsed = parse_manifest(data, manifest.resolve().parent)
    bulk = BulkIngest(rt.engine, rt.audit_log, rt.vault, rt.students, rt.clock)
    with tqdm(total=parsed.total, unit="file", desc="ingest", disable=None) as bar:

        def advance(result: RowResult) -> None:
            bar.update(1)

        summary = bulk.run(actor, parsed, workers=workers, on_result=advance)
    if summary.unfinished_removed:
        removed = counted(summary.unfinished_removed, "unfinished upload")
        click.echo(f"removed {removed} of an interrupted run")
    click.echo(
        f"{summary.count(RowOutcome.STORED)} stored, "
        f"{summary.count(RowOutcome.ALREADY_STORED)} already stored, "
        f"{summary.count(RowOutcome.REJECTED)} rejected, "
        f"{summary.count(RowOutcome.FAILED)} failed of {counted(len(summary.results), 'row')}; "
        f"{summary.bytes_stored / 1e6:.2f} MB in {summary.seconds:.1f} s "
        f"({summary.megabytes_per_second:.2f} MB/s)"
    )
    if summary.stopped_by:
        click.echo(f"stopped early: {summary.stopped_by}", err=True)
        click.echo("run the same command again to resume", err=True)
    # Written after the summary: the rows are stored whatever becomes of the report, and
    # a full disk or read-only directory must not hide the counts.
    try:
        write_report(report_path, summary.not_stored)
    except OSError as e:
        raise click.ClickException(
            f"cannot write the report {report_path}: {e.strerror or e}; the counts above are "
            "right, and the same command with --report PATH writes it elsewhere (stored rows "
            "are skipped)"
        ) from e
    if summary.not_stored:
        not_stored = counted(len(summary.not_stored), "row")
        click.echo(f"{not_stored} not stored: see {report_path}", err=True)
    if not summary.complete:
        raise SystemExit(1)


@click.group()
def folder() -> None:
    """Whole-folder operations."""


@folder.command("export")
@click.argument("student_id")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Directory to create (must not exist, or be empty).",
)
@click.option(
    "--purpose",
    default="records transfer",
    show_default=True,
    help="Why the folder is exported (recorded).",
)
@AS_OPTION
@with_appcontext
@reports_errors
def folder_export(student_id: str, out_dir: Path, purpose: str, as_email: str) -> None:
    """Export STUDENT_ID's folder (district id): every current document, decrypted, and
    a manifest.json with ids, categories, titles, versions and SHA-256.

    Exits 0 when the export is in place (also with a warning), 1 when it failed and
    nothing was written, 2 for a usage error.
    """
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    exporter = FolderExport(rt.engine, rt.audit_log, rt.documents, rt.clock)
    exporter.require_permission(actor)  # audited, before the lookup could refuse
    student = rt.students.get_by_district_id(actor, student_id)
    result = exporter.export(actor, student.id, out_dir, purpose=purpose)
    for path in result.abandoned_removed:
        click.echo(f"removed {path}, left by an interrupted export")
    click.echo(
        f"exported {counted(len(result.documents), 'document')} "
        f"({result.bytes_written / 1e6:.1f} MB) of "
        f"{student.district_id} {student.full_name} to {result.directory}"
    )
    click.echo(f"manifest.json sha256 {result.manifest_sha256}")
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
