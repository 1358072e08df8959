"""Errors raised by :mod:`audit`."""

from __future__ import annotations


class AuditError(Exception):
    """Root of every error raised by :mod:`audit`."""

    public_message = "The audit log could not complete the request."


class AuditUnavailable(AuditError):
    """An event could not be written; the action it records must not happen."""

    public_message = "The audit log is unavailable, so the action was not performed."


class ProofError(AuditError):
    """An inclusion or consistency proof, or a checkpoint signature, did not verify."""

    public_message = "The audit proof did not verify."
