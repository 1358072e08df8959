"""The admin's pages. Every route needs a signed-in admin (deny by default)."""

from __future__ import annotations

from flask import Blueprint, render_template

from folders.models import Role
from web.auth import current_user, guard_role

bp = Blueprint("admin", __name__, url_prefix="/admin")
guard_role(bp, Role.ADMIN)


@bp.get("/")
def home() -> str:
    return render_template("home.html", user=current_user(), title="Administration")
