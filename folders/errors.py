"""Errors raised by :mod:`folders`. Only ``web/errors.py`` and the CLI turn them into
status codes and exit codes; each carries a ``public_message`` safe to show a user."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class FoldersError(Exception):
    """Root of every error raised by :mod:`folders`."""

    public_message = "The request could not be completed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.public_message)
        if message:
            self.public_message = message


class NotFound(FoldersError):
    """The thing does not exist, or the actor may not know that it exists.

    SECURITY: "not yours" and "does not exist" are deliberately the same error.
    """

    public_message = "Not found."


class Forbidden(FoldersError):
    """The actor is known to lack the role for this action (staff only)."""

    public_message = "You are not allowed to do this."


class InvalidInput(FoldersError):
    """A value given by the caller is malformed or out of range."""

    public_message = "The request is invalid."


class Conflict(FoldersError):
    """The change collides with existing state (e.g. an email already in use)."""

    public_message = "This conflicts with an existing record."


class KeyRetiredDuringUpload(Conflict):
    """The keyring version that wrapped an upload's data key was retired before the
    upload was recorded (``satchel keys retire`` ran meanwhile); nothing was stored."""

    public_message = (
        "The encryption key was retired while this file was being stored, so it was not "
        "stored. Upload it again."
    )


class AuthenticationFailed(FoldersError):
    """Unknown email, wrong password or disabled account (never says which)."""

    public_message = "The email or password is not correct."


class DatabaseUnavailable(FoldersError):
    """The database could not be reached, or the connection broke during the request.

    The server rolls back a transaction whose connection is lost, so nothing was
    half-written. ``str()`` holds the driver's reason for operators (never the SQL
    statement or its parameters, which carry personal data); ``public_message`` names
    nothing about the installation.
    """

    public_message = (
        "The database is unavailable, so nothing was changed. Try again in a few minutes."
    )

    #: The driver failures that mean "the database is down or the connection was lost"
    #: (refused, reset, terminated by an administrator, pool exhausted), as opposed to
    #: a bad statement or a violated constraint, which are bugs.
    CAUSES: ClassVar[tuple[type[Exception], ...]] = (OperationalError, InterfaceError, PoolTimeout)

    def __init__(self, detail: str | None = None) -> None:
        super().__init__()
        self.detail = detail or self.public_message

    def __str__(self) -> str:
        return self.detail

    @classmethod
    def from_cause(cls, error: BaseException) -> DatabaseUnavailable:
        """Describe ``error`` (one of :attr:`CAUSES`) by the driver's first line."""
        cause = error.orig if isinstance(error, DBAPIError) and error.orig else error
        lines = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        return cls(f"the database is unavailable: {reason}")
