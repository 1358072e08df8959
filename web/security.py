"""Cross-cutting HTTP protections: session secret, CSRF tokens, idle timeout, headers."""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime

from flask import Flask, Response, abort, request, session

from config import Settings

_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"

# SECURITY: no inline script or style anywhere; pages may not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def find_secret_key(settings: Settings) -> str | None:
    """The configured secret, else the one ``satchel init`` wrote, else None."""
    if settings.secret_key is not None:
        return settings.secret_key
    try:
        return settings.secret_key_path.read_text().strip() or None
    except FileNotFoundError:
        return None


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def _check_csrf() -> None:
    if request.method not in _UNSAFE_METHODS:
        return
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token", "")
    # SECURITY: every state-changing request carries the session's token.
    if not isinstance(expected, str) or not hmac.compare_digest(expected, given):
        abort(400, description="The form has expired or did not come from Satchel. Reload it.")


def _refuse_nul() -> None:
    """Refuse a NUL character in the path, the user agent, a query or a form value."""
    fields = [request.args, request.form] if request.method in _UNSAFE_METHODS else [request.args]
    texts = [request.path, request.user_agent.string]
    texts += [f"{k}{v}" for values in fields for k, v in values.items(multi=True)]
    # SECURITY: no field accepts NUL; PostgreSQL cannot store it and the audit log refuses
    # it, so it would otherwise fail deep inside a search or a login as a 500.
    if any("\0" in text for text in texts):
        abort(400, description="The request contains a NUL character, which no field accepts.")


def _expire_idle_session(idle_seconds: int) -> None:
    """Forget a session unused for longer than the idle timeout (it must log in again)."""
    if "uid" not in session:
        return
    now = datetime.now(UTC).timestamp()
    seen = session.get("seen")
    if not isinstance(seen, float) or now - seen > idle_seconds:
        session.clear()
        return
    session["seen"] = now


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask, settings: Settings) -> None:
    idle_seconds = int(app.permanent_session_lifetime.total_seconds())
    app.secret_key = find_secret_key(settings)

    @app.before_request
    def _before() -> None:
        if app.secret_key is None:
            # `satchel init` may have run after this process started.
            app.secret_key = find_secret_key(settings)
            if app.secret_key is None:
                abort(503, description="Satchel is not initialised: run `satchel init`.")
        session.permanent = True
        _expire_idle_session(idle_seconds)
        _check_csrf()
        _refuse_nul()

    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
