"""Login, logout, the current user, and the role guard every role blueprint uses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from folders.accounts import UserInfo
from folders.actor import Actor, RequestContext
from folders.errors import AuthenticationFailed, NotFound
from folders.models import Role
from web.context import runtime

bp = Blueprint("auth", __name__)

HOME_BY_ROLE = {
    Role.REGISTRAR: "registrar.home",
    Role.GUARDIAN: "guardian.home",
    Role.COMPLIANCE: "compliance.home",
    Role.ADMIN: "admin.home",
}


def current_user() -> UserInfo | None:
    """The signed-in, still active user of this request, loaded once."""
    if "user" not in g:
        g.user = None
        raw = session.get("uid")
        if isinstance(raw, str):
            try:
                user = runtime().accounts.get(uuid.UUID(raw))
            except (NotFound, ValueError):
                user = None
            if user is not None and user.active and user.role.value == session.get("role"):
                g.user = user
            else:
                session.clear()
    return g.user  # type: ignore[no-any-return]


def current_actor() -> Actor:
    """The signed-in user as an Actor carrying this request's context."""
    user = current_user()
    if user is None:
        abort(401)
    context = RequestContext(
        request_id=request.environ.get("satchel.request_id"),
        client_address=request.remote_addr,
        user_agent=(request.user_agent.string or None),
    )
    return Actor(user_id=user.id, role=user.role, email=user.email, context=context)


def guard_role(blueprint: Blueprint, role: Role) -> None:
    """Deny by default: every route of ``blueprint`` needs a signed-in user with ``role``."""

    @blueprint.before_request
    def _guard() -> Response | None:
        user = current_user()
        if user is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        if user.role is not role:
            abort(403)
        return None


@bp.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@bp.get("/")
def index() -> Response:
    user = current_user()
    if user is None:
        return redirect(url_for("auth.login"))
    return redirect(url_for(HOME_BY_ROLE[user.role]))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("auth/login.html", next_url=next_url, error=None, email="")
    email = request.form.get("email", "")
    try:
        user = runtime().accounts.authenticate(email, request.form.get("password", ""))
    except AuthenticationFailed as e:
        return (
            render_template(
                "auth/login.html", next_url=next_url, error=e.public_message, email=email
            ),
            401,
        )
    # SECURITY: a fresh session on login, so a planted session id gains nothing.
    session.clear()
    session["uid"] = str(user.id)
    session["role"] = user.role.value
    session["seen"] = datetime.now(UTC).timestamp()
    home = url_for(HOME_BY_ROLE[user.role])
    if next_url and next_url.startswith(home):
        return redirect(next_url)
    return redirect(home)


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"))


def _safe_next(value: str | None) -> str | None:
    """Only same-site absolute paths may be redirected to after login."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return None
    parts = urlsplit(value)
    return None if parts.scheme or parts.netloc else value
