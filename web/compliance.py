"""The compliance's pages. Every route needs a signed-in compliance (deny by default)."""

from __future__ import annotations

from flask import Blueprint, render_template

from folders.models import Role
from web.auth import current_user, guard_role

bp = Blueprint("compliance", __name__, url_prefix="/compliance")
guard_role(bp, Role.COMPLIANCE)


@bp.get("/")
def home() -> str:
    return render_template("home.html", user=current_user(), title="Compliance")
