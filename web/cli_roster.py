"""``satchel roster import``: students and guardians from a OneRoster CSV export."""

from __future__ import annotations

from pathlib import Path
from typing import Never

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from web.cli_records import AS_OPTION
from web.cli_support import reports_errors, runtime


@click.group()
def roster() -> None:
    """Import rosters from a student information system."""


@roster.command("import")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
)
@click.option("--dry-run", is_flag=True, help="Check everything and count, but change nothing.")
@AS_OPTION
@with_appcontext
@reports_errors
def roster_import(directory: Path, dry_run: bool, as_email: str) -> None:
    """Import the OneRoster 1.1 or 1.2 CSV files in DIRECTORY.

    Safe to run again with the same or a newer export: unchanged rows are left alone,
    and local restrictions are never undone. Exits 1 if any row was rejected.
    """
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    bars: dict[str, tqdm[Never]] = {}

    def advance(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for previous in bars.values():
                previous.close()
            bar = bars[stage] = tqdm(total=total, unit=stage[:-1], desc=stage, disable=None)
        bar.update(done - bar.n)

    try:
        report = rt.roster.import_directory(actor, directory, dry_run=dry_run, progress=advance)
    finally:
        for bar in bars.values():
            bar.close()
    suffix = " (dry run: nothing was changed)" if report.dry_run else ""
    click.echo(f"OneRoster {report.version.value} roster from {directory}{suffix}")
    for label, count in (
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("skipped", report.skipped),
        ("rejected", len(report.rejected)),
    ):
        click.echo(f"  {label:<10}{count:>6}")
    click.echo(f"  {'links':<10}{report.links_created:>6} created, {report.links_ended} ended")
    if report.rejected:
        click.echo("Rejected rows (nothing was stored for them):")
        for row in report.rejected:
            click.echo(f"  {row.file}:{row.line}: {row.reason}")
        raise SystemExit(1)
