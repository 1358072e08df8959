"""Login (throttled and audited), logout, password-set links, the current user, and the
role guard every role blueprint uses."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from folders.accounts import UserInfo
from folders.actor import Actor, RequestContext
from folders.auditing import refuse
from folders.errors import AuthenticationFailed, InvalidInput, NotFound
from folders.models import Role
from folders.throttle import LoginThrottled
from web import pages
from web.context import runtime

bp = Blueprint("auth", __name__)
pages.register_filters(bp)

HOME_BY_ROLE = {
    Role.REGISTRAR: "registrar.home",
    Role.GUARDIAN: "guardian.home",
    Role.COMPLIANCE: "compliance.home",
    Role.ADMIN: "admin.home",
}

NAV_BY_ROLE: dict[Role, list[tuple[str, str]]] = {
    Role.REGISTRAR: [("registrar.home", "Students")],
    Role.GUARDIAN: [("guardian.home", "Shared with me")],
    Role.COMPLIANCE: [
        ("compliance.home", "Audit trail"),
        ("compliance.verify", "Verify the log"),
        ("compliance.disclosures_find", "Records of disclosures"),
    ],
    Role.ADMIN: [("admin.home", "Accounts")],
}

# A request id set by the proxy in front (X-Request-ID) ties audit events to its logs;
# it is a correlation hint only, kept when it looks like one, else a fresh one is made.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


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
            # SECURITY: a session from before the account was enabled again or given a
            # new password carries an older epoch and counts no more.
            if (
                user is not None
                and user.active
                and user.role.value == session.get("role")
                and session.get("epoch", 0) == user.session_epoch
            ):
                g.user = user
            else:
                session.clear()
    return g.user  # type: ignore[no-any-return]


def request_context() -> RequestContext:
    """Where this request came from, for the audit log."""
    if "request_id" not in g:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    return RequestContext(
        request_id=g.request_id,
        client_address=request.remote_addr,
        user_agent=(request.user_agent.string or None),
    )


def current_actor() -> Actor:
    """The signed-in user as an Actor carrying this request's context."""
    user = current_user()
    if user is None:
        abort(401)
    return Actor(user_id=user.id, role=user.role, email=user.email, context=request_context())


def guard_role(blueprint: Blueprint, role: Role) -> None:
    """Deny by default: every route of ``blueprint`` needs a signed-in user with ``role``.

    Another role's refusal (403) is recorded as ``access.denied`` first, naming the
    method and path (503 if it cannot be recorded).
    """

    @blueprint.before_request
    def _guard() -> ResponseReturnValue | None:
        user = current_user()
        if user is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        if user.role is not role:
            refuse(
                runtime().audit_log,
                current_actor(),
                f"{request.method} {request.path[:200]}: {role.value} pages",
                f"This page is for {role.value} accounts; you are signed in as {user.role.value}.",
            )
        return None


@bp.app_context_processor
def _page_context() -> dict[str, Any]:
    user = current_user()
    return {"user": user, "nav_links": NAV_BY_ROLE[user.role] if user else []}


@bp.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@bp.get("/")
def index() -> ResponseReturnValue:
    user = current_user()
    if user is None:
        return redirect(url_for("auth.login"))
    return redirect(url_for(HOME_BY_ROLE[user.role]))


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("auth/login.html", next_url=next_url, error=None, email="")
    email = request.form.get("email", "")
    try:
        user = runtime().logins.log_in(email, request.form.get("password", ""), request_context())
    except LoginThrottled as e:
        page = render_template(
            "auth/login.html", next_url=next_url, error=e.public_message, email=email
        )
        response = make_response(page, 429)
        response.headers["Retry-After"] = str(e.retry_after)
        return response
    except AuthenticationFailed as e:
        return (
            render_template(
                "auth/login.html", next_url=next_url, error=e.public_message, email=email
            ),
            401,
        )
    _start_session(user)
    home = url_for(HOME_BY_ROLE[user.role])
    if next_url and next_url.startswith(home):
        return redirect(next_url)
    return redirect(home)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/set-password/<token>", methods=["GET", "POST"])
def set_password(token: str) -> ResponseReturnValue:
    """The page a one-time link opens. Unknown, used and expired links are 404."""
    account = runtime().onboarding.check(token)
    if request.method == "GET":
        return render_template("auth/set_password.html", account=account, errors={})
    password = request.form.get("password", "")
    errors: dict[str, str] = {}
    if password != request.form.get("confirm", ""):
        errors["confirm"] = "The two passwords are not the same."
    else:
        try:
            runtime().onboarding.redeem(token, password, request_context())
        except InvalidInput as e:
            errors["password"] = e.public_message
    if errors:
        return render_template("auth/set_password.html", account=account, errors=errors), 400
    # SECURITY: whoever was signed in on this browser is signed out.
    session.clear()
    flash("Your password is set. Log in with it now.")
    return redirect(url_for("auth.login"))


def _start_session(user: UserInfo) -> None:
    # SECURITY: a fresh session on login, so a planted session id gains nothing.
    session.clear()
    session["uid"] = str(user.id)
    session["role"] = user.role.value
    session["epoch"] = user.session_epoch
    session["seen"] = datetime.now(UTC).timestamp()


def _safe_next(value: str | None) -> str | None:
    """Only same-site absolute paths may be redirected to after login."""
    # Browsers read a backslash as a slash: "/\\evil.example" would leave the site.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    parts = urlsplit(value)
    return None if parts.scheme or parts.netloc else value
