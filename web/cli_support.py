"""Shared pieces of the ``satchel`` commands: the Runtime, error reporting, the
parameter types for dates and ids, and counted nouns."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from datetime import date
from typing import ParamSpec, TypeVar

import click

from audit.errors import AuditError
from folders.actor import Actor
from folders.errors import DatabaseUnavailable, FoldersError
from folders.runtime import NotInstalled, Runtime
from folders.students import StudentInfo
from storage.errors import StorageError
from web.context import runtime as app_runtime

P = ParamSpec("P")
R = TypeVar("R")


def runtime() -> Runtime:
    """The app's Runtime, closed (connections released) when the command ends."""
    current = app_runtime()
    click.get_current_context().call_on_close(current.close)
    return current


def on_student(as_email: str, district_id: str) -> tuple[Runtime, Actor, StudentInfo]:
    """The Runtime, the ``--as`` account as an Actor, and the student with ``district_id``.

    Raises NotFound (no such active account, no such student) and Forbidden (an account
    that may not look students up; the refusal is recorded).
    """
    rt = runtime()
    actor = rt.accounts.acting_as(as_email)
    return rt, actor, rt.students.get_by_district_id(actor, district_id)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Satchel's errors, a missing installation (:class:`NotInstalled`: no
    database at the configured place), a lost database and a failing file system into
    a one-line message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (FoldersError, StorageError, AuditError) as e:
            # NotInstalled's text names the path an operator mistyped, or must init.
            operator_detail = StorageError | AuditError | NotInstalled
            detail = str(e) if isinstance(e, operator_detail) else e.public_message
            raise click.ClickException(detail) from e
        except DatabaseUnavailable.CAUSES as e:
            # Its text already reads "the database is unavailable: <driver's reason>".
            raise click.ClickException(str(DatabaseUnavailable.from_cause(e))) from e
        except BrokenPipeError:
            raise  # the reader went away (`| head`): Click ends quietly
        except OSError as e:
            # A last resort: commands name their own file errors precisely, and one
            # that slips through is still a line naming the file, not a traceback.
            raise click.ClickException(describe_os_error(e)) from e

    return wrapper


def describe_os_error(error: OSError) -> str:
    """``cannot use PATH: REASON`` (``strerror``, else the error's text)."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return f"file system error: {reason}"
    return f"cannot use {error.filename}: {reason}"


class DateType(click.ParamType[date]):
    """A day written YYYY-MM-DD, as a :class:`~datetime.date`; anything else is a usage
    error in those terms (never strptime codes)."""

    name = "date"
    _FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "YYYY-MM-DD"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> date:
        if isinstance(value, date):
            return value
        text = str(value).strip()
        if not self._FORM.fullmatch(text):
            self.fail(f"{text!r} is not a date (YYYY-MM-DD).", param, ctx)
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not a real date (YYYY-MM-DD).", param, ctx)


DATE = DateType()


class IdType(click.ParamType[uuid.UUID]):
    """A record's id, a UUID; ``what`` names it in the usage error (``grant id``)."""

    name = "id"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        text = str(value).strip()
        try:
            return uuid.UUID(text)
        except ValueError:
            self.fail(f"{text!r} is not a {self.what} (a UUID).", param, ctx)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 row``, ``2 rows``: the count and the noun, plural unless the count is 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
