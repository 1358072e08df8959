"""The admin's pages. Every route needs a signed-in admin (deny by default).

Create registrar, compliance and guardian accounts (without a password), disable
accounts, and issue one-time password-set links.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from folders.errors import Conflict, InvalidInput
from folders.models import Role
from web import pages
from web.auth import current_actor, guard_role
from web.context import runtime

bp = Blueprint("admin", __name__, url_prefix="/admin")
guard_role(bp, Role.ADMIN)

# Administrators are made at the server's command line (`satchel user add`), not here.
CREATABLE_ROLES = (Role.REGISTRAR, Role.COMPLIANCE, Role.GUARDIAN)


@bp.get("/")
def home() -> ResponseReturnValue:
    return _home({}, {"role": Role.GUARDIAN.value})


def _home(errors: dict[str, str], values: dict[str, str], status: int = 200) -> ResponseReturnValue:
    query = request.args.get("q", "").strip()
    found = runtime().accounts.find_users(current_actor(), query, page=pages.page_number())
    page = render_template(
        "admin/home.html",
        title="Accounts",
        query=query,
        found=found,
        roles=CREATABLE_ROLES,
        errors=errors,
        values=values,
    )
    return page if status == 200 else (page, status)


@bp.post("/users")
def create_user() -> ResponseReturnValue:
    values = {name: pages.form_text(name) for name in ("email", "display_name", "role")}
    try:
        role = Role(values["role"])
        if role not in CREATABLE_ROLES:
            raise ValueError(role)
    except ValueError:
        return _home({"role": "Choose the kind of account."}, values, 400)
    try:
        user = runtime().onboarding.create_account(
            current_actor(), values["email"], role, values["display_name"] or None
        )
    except (InvalidInput, Conflict) as e:
        return _home({"email": e.public_message}, values, 400)
    flash(f"The {user.role.value} account {user.email} is created. Send them a password link.")
    return redirect(url_for("admin.home"))


@bp.post("/users/<uuid:user_id>/disable")
def disable_user(user_id: uuid.UUID) -> ResponseReturnValue:
    try:
        user = runtime().onboarding.disable_account(current_actor(), user_id)
    except InvalidInput as e:
        flash(e.public_message, "error")
        return redirect(url_for("admin.home"))
    flash(f"The account {user.email} is disabled; it can no longer log in.")
    return redirect(url_for("admin.home"))


@bp.post("/users/<uuid:user_id>/password-link")
def password_link(user_id: uuid.UUID) -> ResponseReturnValue:
    try:
        link = runtime().onboarding.issue(current_actor(), user_id)
    except InvalidInput as e:
        flash(e.public_message, "error")
        return redirect(url_for("admin.home"))
    # SECURITY: the link is shown only in the embedded (single-machine) mode; production
    # deployments deliver it by their own channel and never put it on an admin's screen.
    shown = runtime().settings.embedded
    url = url_for("auth.set_password", token=link.token, _external=True) if shown else None
    return render_template("admin/link.html", title="Password link", link=link, url=url)
