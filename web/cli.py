"""The ``satchel`` command line: the second front door, beside the web app.

Built on Flask's click integration so commands and views share one app factory and one
:class:`Runtime`. Commands are thin: parse options, call a service, print the result.
Exit codes: 0 success, 1 a check or operation failed, 2 usage or configuration error.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from config import ConfigError, Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.db import current_revision, upgrade
from folders.doctor import run_checks
from folders.models import Role
from web.cli_audit import audit_cli
from web.cli_fsck import fsck
from web.cli_guardians import guardian
from web.cli_ingest import folder, ingest
from web.cli_keys import keys
from web.cli_records import demo, document, grant, student
from web.cli_roster import roster
from web.cli_support import reports_errors, runtime


def _create_app() -> Flask:
    from web.app import create_app

    return create_app(Settings.load())


class _SatchelGroup(FlaskGroup):
    """Flask's command group (commands and views share one app factory) without Flask's
    own options and environment variables.

    ``--app``, ``--env-file`` and ``--debug`` would do nothing here: the app and its
    settings come from Satchel's configuration alone (``create_app`` wins over
    ``--app``, no dotenv files are read, debug mode is never set). Nor is any option
    read from ``FLASK_*`` variables. Every command is registered on this group, so
    listing or finding one never loads the app (whose settings may be wrong: only the
    command that needs the app reports that) or other packages' Flask commands.
    """

    def __init__(self, **extra: Any) -> None:
        extra.setdefault("context_settings", {})["auto_envvar_prefix"] = None
        super().__init__(**extra)
        self.params = [p for p in self.params if p.name not in _FLASK_OPTIONS]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # FlaskGroup's own parse_args reads FLASK_APP and FLASK_ENV_FILE for the options
        # removed above; Satchel has no use for them.
        return click.Group.parse_args(self, ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return click.Group.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return click.Group.get_command(self, ctx, cmd_name)


_FLASK_OPTIONS = frozenset({"app", "env_file", "debug"})


@click.group(
    cls=_SatchelGroup,
    create_app=_create_app,
    add_default_commands=False,
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="satchel", prog_name="satchel", message="%(prog)s %(version)s")
def cli() -> None:
    """Satchel: the encrypted cumulative student folder vault.

    Configuration comes from SATCHEL_CONFIG (or ./satchel.toml) and SATCHEL_*
    environment variables; see `satchel config show`.
    """


@cli.command()
@with_appcontext
@reports_errors
def init() -> None:
    """Create the data directory, key files (mode 0600), database and schema.

    Safe to run again: existing keys are kept and only pending migrations run. The
    only command that creates an installation; the others refuse a missing one.
    """
    report = initialize(runtime())
    for item in report.created:
        click.echo(f"created  {item}")
    for item in report.kept:
        click.echo(f"kept     {item}")


@cli.command()
@click.option(
    "--bind",
    metavar="HOST:PORT",
    help="Address to listen on (default: the bind setting, SATCHEL_BIND; "
    f"{Settings.bind} unless set).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    metavar="N",
    help="Gunicorn worker processes (default: the workers setting, SATCHEL_WORKERS; "
    f"{Settings.workers} unless set).",
)
@with_appcontext
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the web app with gunicorn (run `satchel init` first)."""
    settings = runtime().settings
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind or settings.bind,
        "--workers",
        str(workers or settings.workers),
        "--access-logfile",
        "-",
        # SECURITY: gunicorn trusts no forwarded header itself (by default it would take
        # X-Forwarded-Proto from 127.0.0.1); the app's ProxyFix, set by the proxy_hops
        # setting, is the one place that does.
        "--forwarded-allow-ips",
        "",
        "web.wsgi:application",
    ]
    click.echo(f"Satchel listening on http://{bind or settings.bind}/ (Ctrl-C stops)")
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with gunicorn


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@with_appcontext
@reports_errors
def db_upgrade() -> None:
    """Apply pending schema migrations (an SQLite database must exist: see `init`)."""
    engine = runtime().engine
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@cli.group("config")
def config_group() -> None:
    """Configuration commands."""


@config_group.command("show")
@with_appcontext
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    shown = runtime().settings.describe()
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        click.echo(f"{key.ljust(width)}  {value}")


@cli.command()
@with_appcontext
def doctor() -> None:
    """Check the database, object store, keyring, signing key, libmagic and upload spool."""
    results = run_checks(runtime())
    for result in results:
        click.echo(f"{'OK  ' if result.ok else 'FAIL'}  {result.name}: {result.detail}")
    if not all(r.ok for r in results):
        raise SystemExit(1)


@cli.group()
def user() -> None:
    """Manage user accounts."""


def _read_password(from_stdin: bool, *, required: bool) -> str | None:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise click.UsageError("--password-stdin given but standard input was empty")
        return value
    if sys.stdin.isatty():
        prompt = "Password" if required else "Password (empty: none, set one later)"
        value = click.prompt(
            prompt,
            hide_input=True,
            confirmation_prompt=True,
            default="" if not required else None,
            show_default=False,
        )
        return value or None
    if required:
        raise click.UsageError("no terminal to prompt on: pass the password with --password-stdin")
    return None


@user.command("add")
@click.argument("email")
@click.option(
    "--role", required=True, type=click.Choice([r.value for r in Role]), help="Account role."
)
@click.option("--name", "display_name", help="Display name (default: from the email).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
@reports_errors
def user_add(email: str, role: str, display_name: str | None, password_stdin: bool) -> None:
    """Create an account with ROLE for EMAIL."""
    password = _read_password(password_stdin, required=False)
    info = runtime().accounts.add_user(
        Actor.operator(), email, Role(role), display_name=display_name, password=password
    )
    suffix = "" if info.has_password else " (no password yet: `satchel user passwd`)"
    click.echo(f"created {info.role.value} {info.email}{suffix}")


@user.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
@reports_errors
def user_passwd(email: str, password_stdin: bool) -> None:
    """Set the password of EMAIL."""
    password = _read_password(password_stdin, required=True)
    assert password is not None
    info = runtime().accounts.set_password(Actor.operator(), email, password)
    click.echo(f"password set for {info.email}")


@user.command("list")
@click.option("--role", type=click.Choice([r.value for r in Role]), help="Only this role.")
@with_appcontext
@reports_errors
def user_list(role: str | None) -> None:
    """List accounts."""
    users = runtime().accounts.list_users(Actor.operator(), Role(role) if role else None)
    click.echo(f"{'EMAIL':40} {'ROLE':11} {'STATUS':9} LAST LOGIN")
    for u in users:
        last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        status = "active" if u.active else "disabled"
        click.echo(f"{u.email:40} {u.role.value:11} {status:9} {last}")


@user.command("disable")
@click.argument("email")
@with_appcontext
@reports_errors
def user_disable(email: str) -> None:
    """Disable EMAIL so it can no longer log in."""
    info = runtime().accounts.disable(Actor.operator(), email)
    click.echo(f"disabled {info.email}")


@user.command("enable")
@click.argument("email")
@with_appcontext
@reports_errors
def user_enable(email: str) -> None:
    """Let the disabled account EMAIL log in again, with the password it had."""
    info = runtime().accounts.enable(Actor.operator(), email)
    click.echo(f"enabled {info.email}")


cli.add_command(demo)
cli.add_command(student)
cli.add_command(document)
cli.add_command(grant)
cli.add_command(guardian)
cli.add_command(keys)
cli.add_command(ingest)
cli.add_command(folder)
cli.add_command(roster)

cli.add_command(audit_cli)
cli.add_command(fsck)


@user.command("link")
@click.argument("email")
@with_appcontext
@reports_errors
def user_link(email: str) -> None:
    """Print a one-time link with which EMAIL sets their password.

    Older unused links for the account stop working. Deliver it by a trusted channel.
    """
    rt = runtime()
    account = rt.accounts.get_by_email(Actor.operator(), email)
    link = rt.onboarding.issue(Actor.operator(), account.id)
    click.echo(f"{rt.settings.effective_public_url}/set-password/{link.token}")
    click.echo(f"valid until {link.expires_at:%Y-%m-%d %H:%M} UTC, once", err=True)


def main() -> None:
    """Console entry point; a configuration error exits 2 naming the key."""
    try:
        cli.main(prog_name="satchel")
    except ConfigError as e:
        click.echo(f"satchel: configuration error: {e}", err=True)
        raise SystemExit(2) from None
