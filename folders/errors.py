"""Errors raised by :mod:`folders`. Only ``web/errors.py`` and the CLI turn them into
status codes and exit codes; each carries a ``public_message`` safe to show a user."""

from __future__ import annotations


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


class AuthenticationFailed(FoldersError):
    """Unknown email, wrong password or disabled account (never says which)."""

    public_message = "The email or password is not correct."
