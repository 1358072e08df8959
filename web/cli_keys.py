"""``satchel keys``: keyring status, rotation, retirement, destruction, crypto-shredding."""

from __future__ import annotations

import uuid

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from folders.actor import Actor
from folders.errors import InvalidInput
from web.cli_support import reports_errors, runtime


@click.group()
def keys() -> None:
    """Manage the key-encryption keys that wrap every document's data key."""


@keys.command("status")
@with_appcontext
@reports_errors
def keys_status() -> None:
    """Keyring versions and how many data keys each one wraps."""
    versions = runtime().keys.status(Actor.operator())  # an error comes before the header
    click.echo(f"{'VERSION':<8} {'CREATED':<17} {'STATE':<10} DATA KEYS")
    for v in versions:
        state = (
            "destroyed"
            if v.destroyed
            else "retired"
            if v.retired
            else "active"
            if v.active
            else "usable"
        )
        click.echo(f"{v.version:<8} {v.created_at:%Y-%m-%d %H:%M} {state:<10} {v.data_keys}")


@keys.command("rotate")
@click.option(
    "--resume",
    is_flag=True,
    help="Only finish rewrapping under the active version (after an interruption).",
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
@with_appcontext
@reports_errors
def keys_rotate(resume: bool, batch_size: int) -> None:
    """Add a key version and rewrap every data key under it. Objects are not rewritten."""
    bar = tqdm(unit="key", desc="rewrapping", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    result = runtime().keys.rotate(
        Actor.operator(), resume=resume, batch_size=batch_size, progress=progress
    )
    bar.close()
    click.echo(
        f"active version {result.active_version}: rewrapped {result.rewrapped} data "
        f"keys, {result.remaining} left on older versions"
    )


@keys.command("retire")
@click.option(
    "--below",
    "min_version",
    type=click.IntRange(1),
    required=True,
    help="Versions below this can no longer decrypt.",
)
@with_appcontext
@reports_errors
def keys_retire(min_version: int) -> None:
    """Retire old versions once nothing is wrapped under them."""
    runtime().keys.retire_below(Actor.operator(), min_version)
    click.echo(f"versions below {min_version} retired")


@keys.command("destroy")
@click.option(
    "--reason",
    required=True,
    help="Why (e.g. the backups that need them have expired); recorded.",
)
@click.confirmation_option(
    prompt="Erase the retired key versions for good? Backups that need them become unreadable."
)
@with_appcontext
@reports_errors
def keys_destroy(reason: str) -> None:
    """Erase retired key versions: every backup that needs them becomes unreadable."""
    destroyed = runtime().keys.destroy_retired(Actor.operator(), reason)
    if not destroyed:
        click.echo("no retired key version left to destroy")
        return
    click.echo(f"key versions {', '.join(str(v) for v in destroyed)} destroyed")


@keys.command("shred")
@click.argument("version_id")
@click.option("--reason", required=True, help="Why (e.g. the retention schedule); recorded.")
@click.confirmation_option(prompt="Destroy this version's content for good?")
@with_appcontext
@reports_errors
def keys_shred(version_id: str, reason: str) -> None:
    """Crypto-shred one document version: its data key and object are destroyed."""
    try:
        parsed = uuid.UUID(version_id)
    except ValueError:
        raise InvalidInput(f"Not a version id: {version_id!r}.") from None
    runtime().keys.shred_version(Actor.operator(), parsed, reason)
    click.echo(f"version {parsed} destroyed")
