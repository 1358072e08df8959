"""The guardian's pages. Every route needs a signed-in guardian (deny by default)."""

from __future__ import annotations

from flask import Blueprint, render_template

from folders.models import Role
from web.auth import current_user, guard_role

bp = Blueprint("guardian", __name__, url_prefix="/guardian")
guard_role(bp, Role.GUARDIAN)


@bp.get("/")
def home() -> str:
    return render_template("home.html", user=current_user(), title="My students")
