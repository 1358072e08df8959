"""The Flask application factory: one app per :class:`Runtime`."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Settings
from folders.runtime import Runtime
from web import admin, auth, compliance, errors, guardian, registrar, security
from web.context import RUNTIME_KEY


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app from ``runtime`` (or from ``settings``, or from the environment).

    Raises config.ConfigError for invalid settings; key files are read on first use.
    """
    if runtime is None:
        runtime = Runtime(settings if settings is not None else Settings.load())
    s = runtime.settings
    app = Flask(__name__)
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
