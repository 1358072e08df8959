"""The Flask application factory: one app per :class:`Runtime`."""

from __future__ import annotations

from datetime import timedelta
from typing import IO, TYPE_CHECKING, cast

from flask import Flask, Request, current_app
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Settings
from folders.runtime import Runtime
from storage.ingest import SpoolFile
from web import admin, auth, compliance, errors, guardian, registrar, security
from web.context import RUNTIME_KEY, runtime_of

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class SpoolingRequest(Request):
    """A request whose uploaded files go straight into the vault's encrypted spool.

    SECURITY: werkzeug's form parser keeps each file part in a SpooledTemporaryFile,
    which moves to a plaintext file in the system temp dir past 500 KB. Here each part
    is written into a :class:`SpoolFile` instead: in memory, or encrypted under a
    throwaway key in the vault's spool directory (``DATA_DIR/tmp``), so plaintext never
    rests on disk, even before Satchel's own code sees the upload. The spool enforces
    the per-file size limit while the part arrives (a larger part is dropped, and
    refused when stored); ``MAX_CONTENT_LENGTH`` still bounds the whole request.
    The parts of one request share one memory allowance (the vault's
    ``memory_spool_bytes``): a part that would take the request past it spills, so a
    request holds about that much in memory however many files it carries. A part
    whose spool fails (a full or missing spool directory) keeps the error for the
    route, which reports it for that file (see :meth:`SpoolFile.spool`).
    """

    def __init__(
        self, environ: WSGIEnvironment, populate_request: bool = True, shallow: bool = False
    ) -> None:
        super().__init__(environ, populate_request, shallow)
        self._spool_files: list[SpoolFile] = []

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        vault = runtime_of(current_app).vault
        held = sum(f.memory_bytes for f in self._spool_files)
        file = SpoolFile(vault.spool_writer(memory_limit=vault.memory_spool_bytes - held))
        self._spool_files.append(file)
        # Werkzeug writes the part, rewinds it and wraps it in a FileStorage; the
        # registrar takes its spool from there (registrar.received).
        return cast(IO[bytes], file)

    def close(self) -> None:
        # Also the spools of a form whose parsing failed half-way (werkzeug closes only
        # the files of a parsed form).
        super().close()
        for file in self._spool_files:
            file.close()


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app from ``runtime`` (or from ``settings``, or from the environment).

    Raises config.ConfigError for invalid settings; key files are read on first use.
    """
    if runtime is None:
        runtime = Runtime(settings if settings is not None else Settings.load())
    s = runtime.settings
    app = Flask(__name__)
    # SECURITY: uploaded files go into the encrypted spool, never a plaintext temp file.
    app.request_class = SpoolingRequest
    app.extensions[RUNTIME_KEY] = runtime
    app.config.update(
        MAX_CONTENT_LENGTH=s.max_upload_bytes + 1024 * 1024,  # multipart overhead
        SESSION_COOKIE_NAME="satchel_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=s.effective_secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=s.session_idle_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    if s.proxy_hops:
        # Behind a reverse proxy the client address comes from X-Forwarded-For; trust
        # exactly the configured number of hops, no more.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=s.proxy_hops, x_proto=s.proxy_hops, x_host=s.proxy_hops
        )
    security.init_app(app, s)
    errors.init_app(app, max_upload_mb=s.max_upload_mb)
    app.register_blueprint(auth.bp)
    app.register_blueprint(registrar.bp)
    app.register_blueprint(guardian.bp)
    app.register_blueprint(compliance.bp)
    app.register_blueprint(admin.bp)
    return app
