"""``satchel keys``: keyring status, rotation, retirement, destruction, crypto-shredding."""

from __future__ import annotations

import uuid

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from folders.actor import Actor
from web.cli_support import IdType, counted, reports_errors, runtime


@click.group()
def keys() -> None:
    """Manage the key-encryption keys that wrap every document's data key."""


@keys.command("status")
@with_appcontext
@reports_errors
def keys_status() -> None:
    """Keyring versions and how many data keys each one wraps."""
    versions = runtime().keys.status(Actor.operator())  # an error comes before the header
    click.echo(f"{'VERSION':<8} {'CREATED':<16} {'STATE':<10} DATA KEYS")
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
        created = f"{v.created_at:%Y-%m-%d %H:%M}"
        click.echo(f"{v.version:<8} {created:<16} {state:<10} {v.data_keys}")


@keys.command("rotate")
@click.option(
    "--resume",
    is_flag=True,
    help="Only finish rewrapping under the active version (after an interruption).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    metavar="N",
    help="Data keys rewrapped per transaction; an interruption loses at most one batch.",
)
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
        f"active version {result.active_version}: rewrapped "
        f"{counted(result.rewrapped, 'data key')}, {result.remaining} left on older versions"
    )


@keys.command("retire")
@click.option(
    "--below",
    "min_version",
    type=click.IntRange(1),
    required=True,
    metavar="N",
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
    help="Why, e.g. the backups that need them have expired (recorded).",
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
    noun = "key version" if len(destroyed) == 1 else "key versions"
    click.echo(f"{noun} {', '.join(str(v) for v in destroyed)} destroyed")


@keys.command("shred")
@click.argument("version_id", type=IdType("document version id"))
@click.option("--reason", required=True, help="Why, e.g. the retention schedule (recorded).")
@click.confirmation_option(prompt="Destroy this version's content for good?")
@with_appcontext
@reports_errors
def keys_shred(version_id: uuid.UUID, reason: str) -> None:
    """Crypto-shred one document version: its data key and object are destroyed."""
    runtime().keys.shred_version(Actor.operator(), version_id, reason)
    click.echo(f"version {version_id} destroyed")
