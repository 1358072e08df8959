"""The guardian's pages. Every route needs a signed-in guardian (deny by default).

What the guardian may not see answers 404, whatever the reason (another family's id,
a revoked or expired grant, a restriction), so ids reveal nothing.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, render_template

from audit.events import Action
from folders.models import Role
from web import pages
from web.auth import current_actor, guard_role
from web.context import runtime
from web.downloads import stream_document

bp = Blueprint("guardian", __name__, url_prefix="/guardian")
guard_role(bp, Role.GUARDIAN)


@bp.get("/")
def home() -> str:
    actor = current_actor()
    students = runtime().students.my_students(actor)
    return render_template(
        "guardian/home.html",
        title="Shared with me",
        students=students,
        inbox=runtime().inbox.open(actor),
    )


@bp.get("/documents/<uuid:document_id>/view")
def view(document_id: uuid.UUID) -> Response:
    """The current version shown in the browser (PDF viewer or image)."""
    opened = runtime().documents.open(current_actor(), document_id, action=Action.DOCUMENT_PREVIEW)
    return stream_document(opened, inline=True)


@bp.get("/documents/<uuid:document_id>/download")
def download(document_id: uuid.UUID) -> Response:
    opened = runtime().documents.open(current_actor(), document_id, action=Action.DOCUMENT_DOWNLOAD)
    return stream_document(opened, inline=False)


@bp.get("/students/<uuid:student_id>/history")
def history(student_id: uuid.UUID) -> str:
    """Who on the school's staff looked at or shared the child's records, and when."""
    try:
        bound = pages.snapshot_bound()
    except ValueError:
        bound = None  # a damaged link: the newest entries, as for a bad page number
    record = runtime().disclosures.for_guardian(
        current_actor(), student_id, page=pages.page_number(), up_to_seq=bound
    )
    return render_template(
        "guardian/history.html",
        title=f"Access history: {record.student.full_name}",
        record=record,
    )
