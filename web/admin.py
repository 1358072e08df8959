"""The admin's pages. Every route needs a signed-in admin (deny by default).

Create registrar, compliance and guardian accounts (without a password), disable and
enable accounts, and, in the embedded mode only, issue one-time password-set links.
Elsewhere an operator makes links on the server with ``satchel user link EMAIL``.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from folders.auditing import refuse
from folders.errors import Conflict, InvalidInput
from folders.models import Role
from web import pages
from web.auth import current_actor, guard_role
from web.context import runtime

bp = Blueprint("admin", __name__, url_prefix="/admin")
guard_role(bp, Role.ADMIN)

# Administrators are made at the server's command line (`satchel user add`), not here.
CREATABLE_ROLES = (Role.REGISTRAR, Role.COMPLIANCE, Role.GUARDIAN)

LINK_COMMAND = "satchel user link"


def _links_on_screen() -> bool:
    """Whether this page may make password links and show them to the admin.

    SECURITY: only in the embedded (single-machine) mode. A production deployment never
    puts a link on an admin's screen, and Satchel has no mail to send one by, so a link
    made here could reach nobody; and making one stops every earlier unused link for
    the account, which would silently break a link an operator already delivered.
    """
    return runtime().settings.embedded


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
        links_on_screen=_links_on_screen(),
        link_command=LINK_COMMAND,
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
    if _links_on_screen():
        next_step = "Give them a password link (the Password link button) to set a password."
    else:
        next_step = (
            f"It has no password yet: an operator makes a password link on the server with "
            f"`{LINK_COMMAND} {user.email}` and gives it to them privately."
        )
    flash(f"The {user.role.value} account {user.email} is created. {next_step}")
    return redirect(url_for("admin.home"))


@bp.post("/users/<uuid:user_id>/disable")
def disable_user(user_id: uuid.UUID) -> ResponseReturnValue:
    """Ask first, then disable: disabling signs the account out everywhere, so the
    list's button leads to a confirmation page, whose button sends ``confirm=yes``.
    Either way the admin goes back to the same search and page of the list."""
    place = _list_place()
    back = url_for("admin.home", q=place.get("q"), page=place.get("page"))
    if request.form.get("confirm") != "yes":
        account = runtime().accounts.get(user_id)  # NotFound: a 404
        if not account.active:
            flash(f"The account {account.email} is disabled already; nothing was changed.")
            return redirect(back)
        return render_template(
            "admin/disable.html",
            title=f"Disable {account.email}?",
            account=account,
            place=place,
            back=back,
        )
    try:
        user = runtime().onboarding.disable_account(current_actor(), user_id)
    except InvalidInput as e:
        flash(e.public_message, "error")
        return redirect(back)
    flash(f"The account {user.email} is disabled; it can no longer log in.")
    return redirect(back)


@bp.post("/users/<uuid:user_id>/enable")
def enable_user(user_id: uuid.UUID) -> ResponseReturnValue:
    """Enable a disabled account at once (it undoes nothing but the disabling), and go
    back to the same search and page of the list."""
    place = _list_place()
    back = url_for("admin.home", q=place.get("q"), page=place.get("page"))
    account = runtime().accounts.get(user_id)  # NotFound: a 404
    if account.active:
        flash(f"The account {account.email} is active already; nothing was changed.")
        return redirect(back)
    user = runtime().onboarding.enable_account(current_actor(), user_id)
    if not user.has_password:
        next_step = "It has no password yet: it needs a password link to log in."
    else:
        next_step = (
            "It logs in with the password it had. If someone else may know that "
            "password, give its owner a new password link."
        )
    flash(f"The account {user.email} is enabled again. {next_step}")
    return redirect(back)


def _list_place() -> dict[str, str]:
    """The search and page of the account list a form was sent from (``q``, ``page``)."""
    place = {"q": request.form.get("q", "").strip()[:200]}
    page = request.form.get("page", "")
    if page.isascii() and page.isdigit() and 0 < len(page) <= 6:
        place["page"] = page
    return {k: v for k, v in place.items() if v}


@bp.post("/users/<uuid:user_id>/password-link")
def password_link(user_id: uuid.UUID) -> ResponseReturnValue:
    """Make a link and show it: the embedded mode only (see :func:`_links_on_screen`).

    Elsewhere the request is refused (403, recorded as ``access.denied``) before anything
    is issued, so earlier links keep working: the button is not offered there, and only
    a stale page or a hand-made request gets here.
    """
    if not _links_on_screen():
        refuse(
            runtime().audit_log,
            current_actor(),
            f"password link for account {user_id} on screen: not in this setup",
            "Password links are not made on this page in this setup. An operator makes "
            f"one on the server with `{LINK_COMMAND} EMAIL` and gives it to the account's "
            "owner privately. No link was made; earlier links still work.",
        )
    try:
        link = runtime().onboarding.issue(current_actor(), user_id)
    except InvalidInput as e:
        flash(e.public_message, "error")
        return redirect(url_for("admin.home"))
    url = url_for("auth.set_password", token=link.token, _external=True)
    return render_template("admin/link.html", title="Password link", link=link, url=url)
