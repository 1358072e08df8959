"""Errors raised by :mod:`storage`.

Every error carries a ``public_message`` that is safe to show to an end user; the
``str()`` of an error may hold operator detail (endpoints, keys) and belongs in logs.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


class StorageError(Exception):
    """Root of every error raised by :mod:`storage`."""

    public_message = "The document store could not complete the request."


class ObjectNotFound(StorageError):
    """The object store holds no object under ``key``."""

    public_message = "The stored content of this document is missing from the document store."

    def __init__(self, key: str) -> None:
        super().__init__(f"no object under key {key!r}")
        self.key = key


class StorageUnavailable(StorageError):
    """The object store could not be reached or failed (after bounded retries)."""

    public_message = "The document store is unavailable; try again later."

    def __init__(self, endpoint: str, detail: str, *, message: str | None = None) -> None:
        super().__init__(message or f"object store at {endpoint} is unavailable: {detail}")
        self.endpoint = endpoint
        self.detail = detail


class SpoolUnavailable(StorageUnavailable):
    """The upload spool directory refused a spill file or a write to it: it is missing,
    not a directory, not writable, full, or failing.

    ``str()`` names the directory, what failed and the operating system's reason (for
    the log and ``satchel doctor``); the public message gives the reason, not the
    server's path. A StorageUnavailable, so the web answers 503.
    """

    def __init__(self, directory: Path | None, action: str, error: OSError) -> None:
        where = str(directory) if directory is not None else tempfile.gettempdir()
        detail = f"{action}: {_os_reason(error)}"
        super().__init__(where, detail, message=f"upload spool directory {where}: {detail}")
        self.directory = Path(where)
        self.errno = error.errno
        cause = os.strerror(error.errno) if error.errno else "an operating system error"
        self.public_message = (
            f"The server's temporary space for large uploads failed ({cause}), so this file "
            "was not stored. Try again later; if it keeps failing, tell an operator "
            "(`satchel doctor` names the problem)."
        )


def _os_reason(error: OSError) -> str:
    """The operating system's reason and its errno name: "No space left on device (ENOSPC)"."""
    if not error.errno:
        return str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno, f"errno {error.errno}")
    return f"{os.strerror(error.errno)} ({name})"


class IntegrityError(StorageError):
    """An encrypted object failed authentication: tampered, truncated, reordered,
    swapped with another object, or opened with the wrong key.

    SECURITY: this is the single error type for every integrity failure, so callers
    cannot be turned into an oracle that tells one kind of tampering from another.
    """

    public_message = "The stored document failed its integrity check."


class KeyringError(StorageError):
    """The keyring is missing, unreadable, unsafe (file mode) or lacks a key version."""

    public_message = "The encryption keyring is not usable."


class KeyVersionRetired(KeyringError):
    """The key version was retired or destroyed: it may no longer wrap or unwrap."""


class ContentRejected(StorageError):
    """A file was refused by content inspection.

    ``reason`` is a stable machine-readable code (e.g. ``"pdf_javascript"``);
    ``message`` is a precise human explanation.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.public_message = message


class UploadTooLarge(ContentRejected):
    """The stream exceeded the configured size limit; detected while streaming."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            "too_large",
            f"The file is larger than the limit of {limit_bytes // (1024 * 1024)} MB.",
        )
        self.limit_bytes = limit_bytes
