"""The one place that maps domain, storage and audit errors to HTTP responses.

Not found and not yours are both 404; a refused file is 422 (413 when too large);
an unavailable object store, audit log or database is 503, and so is a full or missing
upload spool directory (storage.errors.SpoolUnavailable, a StorageUnavailable). A
document whose object is missing from the store is a 500: the record exists, its
content was lost. An audit trail that fails an integrity check is a 500 that says so.
``docs/operations.md`` lists every status with its cause and what an operator does
about it.
"""

from __future__ import annotations

import logging

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from audit.errors import AuditError, AuditIntegrityError, AuditUnavailable
from folders.errors import (
    AuthenticationFailed,
    Conflict,
    DatabaseUnavailable,
    FoldersError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from storage.errors import (
    ContentRejected,
    StorageError,
    StorageUnavailable,
    UploadTooLarge,
)

log = logging.getLogger(__name__)

_FOLDERS_STATUS: list[tuple[type[FoldersError], int]] = [
    (DatabaseUnavailable, 503),
    (NotFound, 404),
    (Forbidden, 403),
    (InvalidInput, 400),
    (Conflict, 409),
    (AuthenticationFailed, 401),
]


AUDIT_INTEGRITY_MESSAGE = (
    "The audit trail failed an integrity check, so none of it is shown. "
    "An operator must run `satchel audit verify`."
)


def status_for(error: Exception) -> int:
    """The HTTP status for a Satchel error."""
    if isinstance(error, FoldersError):
        return next((code for kind, code in _FOLDERS_STATUS if isinstance(error, kind)), 400)
    if isinstance(error, UploadTooLarge):
        return 413
    if isinstance(error, ContentRejected):
        return 422
    if isinstance(error, StorageUnavailable | AuditUnavailable):
        return 503
    # An AuditIntegrityError is a 500, not a 503: a 503 says "try again in a few
    # minutes", but this lasts until someone investigates (like a stored document that
    # fails its integrity check). Its page says what it is (AUDIT_INTEGRITY_MESSAGE).
    return 500


def _render(code: int, message: str, heading: str | None = None) -> tuple[str, int]:
    page = render_template("error.html", code=code, message=message, heading=heading)
    return page, code


def init_app(app: Flask, *, max_upload_mb: int) -> None:
    """Register the error pages; ``max_upload_mb`` is named when a request is too large."""

    @app.errorhandler(FoldersError)
    @app.errorhandler(StorageError)
    @app.errorhandler(AuditError)
    def _satchel_error(error: Exception) -> tuple[str, int]:
        code = status_for(error)
        if isinstance(error, AuditIntegrityError):
            # SECURITY: a trail that does not check out is never shown as if it were
            # fine, not even in part; the log has the detail (which event, which check).
            log.error("audit trail integrity check failed: %s", error)
            return _render(
                code, AUDIT_INTEGRITY_MESSAGE, "The audit trail failed an integrity check"
            )
        if code >= 500:
            log.error("request failed: %s", error)
        return _render(code, getattr(error, "public_message", "The request failed."))

    def _database_error(error: Exception) -> tuple[str, int]:
        # The driver's failure becomes the domain's error here, so the page says what
        # happened (503, nothing changed) instead of a bare 500.
        unavailable = DatabaseUnavailable.from_cause(error)
        log.error("request failed: %s", unavailable)
        return _render(503, unavailable.public_message)

    for cause in DatabaseUnavailable.CAUSES:
        app.register_error_handler(cause, _database_error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
        # The whole request was refused before any file was read, so nothing was stored.
        return _render(
            413,
            f"The upload is larger than the limit of {max_upload_mb} MB (for one file, or "
            "for several files uploaded together), so nothing was stored. Upload several "
            "files a few at a time; split a larger scan.",
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[str, int]:
        code = error.code or 500
        return _render(code, error.description or error.name)
