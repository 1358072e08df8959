"""Errors raised by :mod:`audit`."""

from __future__ import annotations


class AuditError(Exception):
    """Root of every error raised by :mod:`audit`."""

    public_message = "The audit log could not complete the request."


class AuditUnavailable(AuditError):
    """An event could not be written; the action it records must not happen."""

    public_message = "The audit log is unavailable, so the action was not performed."


class AuditIntegrityError(AuditError):
    """The stored trail no longer checks out: a damaged entry, a broken chain, a truncated
    log, or events or checkpoints that no longer match. Evidence of tampering or damage,
    not an outage: it lasts until someone investigates (``satchel audit verify``)."""

    public_message = "The audit trail failed an integrity check."


class ProofError(AuditIntegrityError):
    """An inclusion or consistency proof, or a checkpoint signature, did not verify."""

    public_message = "The audit proof did not verify."


class SigningKeyError(AuditError):
    """The checkpoint signing or verifying key is missing, unsafe or malformed.

    ``path`` names the key file (as text) when there is one; ``str()`` holds operator
    detail, ``public_message`` is safe to show.
    """

    public_message = "The audit signing key is not usable."

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.reason = reason
        self.path = path
