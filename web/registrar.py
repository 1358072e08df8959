"""The registrar's pages. Every route needs a signed-in registrar (deny by default).

Find a student; see the folder by category with every version; upload one or several
files; upload a corrected version; open a version for a stated purpose; link and restrict
guardians; share with guardians and revoke.
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from audit.errors import AuditError
from audit.events import Action
from folders.actor import Actor
from folders.categories import RETENTION, Category
from folders.disclosures import DEFAULT_PURPOSE, STAFF_PURPOSES
from folders.documents import DocumentInfo, check_school_year, parse_category
from folders.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    KeyRetiredDuringUpload,
    NotFound,
)
from folders.forms import new_form_id
from folders.models import GrantScope, Relationship, Role
from folders.text import clean_text
from storage.errors import ContentRejected, StorageError
from storage.ingest import Spool, SpoolFile
from web import pages
from web.auth import current_actor, guard_role
from web.context import runtime
from web.downloads import stream_document
from web.errors import status_for

log = logging.getLogger(__name__)

bp = Blueprint("registrar", __name__, url_prefix="/registrar")
guard_role(bp, Role.REGISTRAR)

CATEGORY_CHOICES = [(c.value, RETENTION[c].label) for c in Category]


@dataclass(frozen=True)
class UploadOutcome:
    filename: str
    document: DocumentInfo | None = None
    reason: str | None = None
    status: int = 422  # of a refusal: 413 when the file was too large


@bp.get("/")
def home() -> str:
    query = request.args.get("q", "").strip()
    found = runtime().students.find_students(current_actor(), query, page=pages.page_number())
    return render_template("registrar/home.html", title="Registrar", query=query, found=found)


# The folder --------------------------------------------------------------------------------


#: Documents per page of a folder; a category filter narrows a long one.
FOLDER_PAGE_SIZE = 50


@bp.get("/students/<uuid:student_id>")
def folder(student_id: uuid.UUID) -> str:
    actor = current_actor()
    rt = runtime()
    student = rt.students.get_student(actor, student_id)
    chosen = request.args.get("category", "")
    category = parse_category(chosen) if chosen else None  # unknown: InvalidInput, 400
    found = rt.documents.folder_page(
        actor,
        student_id,
        category=category,
        page=pages.page_number(),
        per_page=FOLDER_PAGE_SIZE,
    )
    return render_template(
        "registrar/folder.html",
        title=f"Folder of {student.full_name}",
        student=student,
        groups=_by_category(found.items),
        found=found,
        category=category,
        categories=list(Category),
    )


def _by_category(documents: Iterable[DocumentInfo]) -> list[tuple[Category, list[DocumentInfo]]]:
    """``documents`` in groups of one category each, in folder order (which keeps a
    category's documents together)."""
    grouped = itertools.groupby(documents, key=lambda document: document.category)
    return [(category, list(group)) for category, group in grouped]


@bp.get("/documents/<uuid:document_id>")
def document(document_id: uuid.UUID) -> ResponseReturnValue:
    return _document_page(document_id, errors={})


def _document_page(
    document_id: uuid.UUID, *, errors: dict[str, str], status: int = 200
) -> ResponseReturnValue:
    actor = current_actor()
    info = runtime().catalog.describe(actor, document_id)
    student = runtime().students.get_student(actor, info.student_id)
    page = render_template(
        "registrar/document.html",
        title=info.title,
        student=student,
        document=info,
        purposes=STAFF_PURPOSES,
        default_purpose=DEFAULT_PURPOSE,
        errors=errors,
    )
    return page if status == 200 else (page, status)


@bp.get("/documents/<uuid:document_id>/versions/<uuid:version_id>")
def open_version(document_id: uuid.UUID, version_id: uuid.UUID) -> Response:
    """Open one version for a purpose from the fixed list (recorded in the audit event)."""
    purpose = request.args.get("purpose", "")
    if purpose not in STAFF_PURPOSES:
        abort(400, description="Choose the purpose for opening this record from the list.")
    inline = request.args.get("mode") == "view"
    opened = runtime().documents.open(
        current_actor(),
        document_id,
        version_id=version_id,
        action=Action.DOCUMENT_PREVIEW if inline else Action.DOCUMENT_DOWNLOAD,
        purpose=purpose,
    )
    return stream_document(opened, inline=inline)


@bp.post("/documents/<uuid:document_id>/versions")
def upload_version(document_id: uuid.UUID) -> ResponseReturnValue:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _document_page(
            document_id, errors={"file": "Choose the corrected file."}, status=400
        )
    try:
        info = runtime().documents.upload_version(
            current_actor(), document_id, received(upload), upload.filename
        )
    except ContentRejected as e:
        return _document_page(document_id, errors={"file": e.message}, status=status_for(e))
    flash(f"Version {info.current.number} of “{info.title}” is stored.")
    return redirect(url_for("registrar.document", document_id=document_id))


# Uploads -----------------------------------------------------------------------------------


@bp.route("/students/<uuid:student_id>/upload", methods=["GET", "POST"])
def upload(student_id: uuid.UUID) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    student = rt.students.get_student(actor, student_id)
    prefix = "multi" if request.form.get("form") == "multi" else "single"
    today = rt.clock()
    values = {
        "category": request.form.get("category", ""),
        "school_year": request.form.get(
            "school_year", _current_school_year(today.year, today.month)
        ),
        "title": request.form.get("title", ""),
        "form": prefix,
    }

    def render(
        errors: dict[str, str], outcomes: list[UploadOutcome], status: int
    ) -> ResponseReturnValue:
        page = render_template(
            "registrar/upload.html",
            title=f"Upload to the folder of {student.full_name}",
            student=student,
            upload_ids={form: new_form_id() for form in ("single", "multi")},
            categories=CATEGORY_CHOICES,
            values=values,
            errors=errors,
            outcomes=outcomes,
            max_upload_mb=runtime().settings.max_upload_mb,
            stored=[o for o in outcomes if o.document],
            rejected=[o for o in outcomes if o.reason],
        )
        return page if status == 200 else (page, status)

    if request.method == "GET":
        return render({}, [], 200)

    files = [f for f in request.files.getlist("files") if f.filename]
    errors: dict[str, str] = {}
    try:
        category = parse_category(values["category"])
    except InvalidInput:
        errors[f"{prefix}-category"] = "Choose a category."
    try:
        school_year = check_school_year(values["school_year"])
    except InvalidInput as e:
        errors[f"{prefix}-school_year"] = e.public_message
    if not files:
        errors[f"{prefix}-files"] = (
            "Choose the files to upload." if prefix == "multi" else "Choose a file to upload."
        )
    if errors:
        return render(errors, [], 400)
    # The same form sent again (a reload of the results page, the browser's history, a
    # second click while the first request is on its way) finds its id claimed.
    upload_id = request.form.get("upload_id", "")
    if upload_id and not rt.upload_forms.claim(actor, upload_id):
        errors[f"{prefix}-files"] = (
            "These files were sent already (the page was reloaded, sent again from the "
            "browser's history, or sent twice), so nothing was stored again. The folder "
            "lists what was stored; choose the files again to upload them once more."
        )
        return render(errors, [], 409)

    # A title given with one file is used; otherwise each title comes from its file name.
    given_title = values["title"].strip() if len(files) == 1 else ""
    outcomes: list[UploadOutcome] = []
    stopped: int | None = None  # the status of the failure that stopped the upload
    try:
        for f in files:
            name = f.filename or ""
            if stopped is not None:
                outcomes.append(UploadOutcome(name, reason=_NOT_TRIED, status=stopped))
                continue
            title = given_title or title_from_filename(name)
            try:
                outcomes.append(_store_one(actor, student_id, f, category, school_year, title))
            except _INSTALLATION_FAILURES as e:
                # Each file is stored whole or not at all, so the files before this one
                # stay stored; the page says which, and the status says the upload failed.
                failure = (
                    DatabaseUnavailable.from_cause(e) if isinstance(e, _DATABASE_CAUSES) else e
                )
                stopped = status_for(failure)
                log.error("upload stopped at file %d of %d: %s", len(outcomes) + 1, len(files), e)
                message = getattr(failure, "public_message", _NOT_TRIED)
                outcomes.append(UploadOutcome(name, reason=message, status=stopped))
    finally:
        if upload_id and not any(o.document for o in outcomes):
            _give_back(actor, upload_id)  # nothing stored: the form may be sent again
    if stopped is not None:
        return render({}, outcomes, stopped)
    # Some files stored is a success; nothing stored means the upload was refused
    # (413 only when every file was refused for its size).
    stored = any(o.document for o in outcomes)
    if all(o.document for o in outcomes):
        values["title"] = ""  # stored: the next file gets a title of its own
    return render({}, outcomes, 200 if stored else max(o.status for o in outcomes))


def _give_back(actor: Actor, upload_id: str) -> None:
    """Release the claim of a form that stored nothing. If the database refuses even
    that, the form's id stays claimed: sent again it stores nothing, and the page says
    to choose the files again (a fresh form), so nothing is lost."""
    try:
        runtime().upload_forms.release(actor, upload_id)
    except _DATABASE_CAUSES as e:
        log.error("could not release upload form %s: %s", upload_id, e)


# Failures of the installation rather than of a file: they stop a multi-file upload.
_DATABASE_CAUSES = DatabaseUnavailable.CAUSES
_INSTALLATION_FAILURES: tuple[type[Exception], ...] = (
    StorageError,
    AuditError,
    DatabaseUnavailable,
    *_DATABASE_CAUSES,
)
_NOT_TRIED = "Not tried: the upload stopped at an earlier file. Upload it again later."


def _store_one(
    actor: Actor,
    student_id: uuid.UUID,
    upload_file: FileStorage,
    category: Category,
    school_year: str | None,
    title: str,
) -> UploadOutcome:
    """Store one file; a refusal of this file is reported, not raised, so the rest go on.

    Failures of the installation (object store, audit log, database) are raised.
    """
    name = upload_file.filename or ""
    try:
        info = runtime().documents.upload(
            actor,
            student_id,
            received(upload_file),
            name,
            category=category,
            title=title,
            school_year=school_year,
        )
    except ContentRejected as e:
        return UploadOutcome(name, reason=e.message, status=status_for(e))
    except InvalidInput as e:
        return UploadOutcome(name, reason=e.public_message)
    except KeyRetiredDuringUpload as e:
        return UploadOutcome(name, reason=e.public_message, status=status_for(e))
    return UploadOutcome(name, document=info)


def received(upload_file: FileStorage) -> Spool:
    """The uploaded file as it arrived: the encrypted spool the form parser wrote it into
    (web.app.SpoolingRequest), which is stored without another copy.

    Raises what stopped the spooling: UploadTooLarge (the file is over the limit) or
    SpoolUnavailable (a StorageUnavailable: the spool directory is missing or full);
    TypeError for a file that did not come through that parser.
    """
    stream = upload_file.stream
    if not isinstance(stream, SpoolFile):
        # SECURITY: any other stream means the upload went through werkzeug's own
        # parser, which leaves large files in plaintext in the system temp directory.
        raise TypeError(f"upload stream is a {type(stream).__name__}, not the encrypted spool")
    return stream.spool()


def title_from_filename(filename: str) -> str:
    """A readable title from a file name: no folders, no extension, spaces for ``_``."""
    stem = PurePosixPath(filename.replace("\\", "/")).stem
    # Control characters become spaces, so that a name carrying them is refused for its
    # file name (the precise reason), not for a title the user never typed.
    stem = "".join(" " if unicodedata.category(c) == "Cc" else c for c in stem)
    words = " ".join(stem.replace("_", " ").split())
    return words[:200] or "Untitled document"


def _current_school_year(year: int, month: int) -> str:
    # School years start in the autumn; from August on, it is the year that starts now.
    start = year if month >= 8 else year - 1
    return f"{start}-{start + 1}"


# Guardians ---------------------------------------------------------------------------------


@bp.get("/students/<uuid:student_id>/guardians")
def guardians(student_id: uuid.UUID) -> ResponseReturnValue:
    return _guardians_page(student_id, errors={}, values={})


def _guardians_page(
    student_id: uuid.UUID,
    *,
    errors: dict[str, str],
    values: dict[str, str],
    status: int = 200,
) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    student = rt.students.get_student(actor, student_id)
    page = render_template(
        "registrar/guardians.html",
        title=f"Guardians of {student.full_name}",
        student=student,
        guardians=rt.students.list_guardians(actor, student_id),
        relationships=[r.value for r in Relationship],
        errors=errors,
        values=values,
    )
    return page if status == 200 else (page, status)


@bp.post("/students/<uuid:student_id>/guardians")
def link_guardian(student_id: uuid.UUID) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    rt.students.get_student(actor, student_id)  # 404 for an unknown student
    email = pages.form_text("email")
    values = {"email": email, "relationship": pages.form_text("relationship")}
    errors: dict[str, str] = {}
    if not email:
        errors["email"] = "Enter the email address of the guardian."
    try:
        relationship = Relationship(values["relationship"])
    except ValueError:
        errors["relationship"] = "Choose a relationship."
    if errors:
        return _guardians_page(student_id, errors=errors, values=values, status=400)
    try:
        info = rt.students.link_guardian(actor, student_id, email, relationship)
    except (InvalidInput, NotFound) as e:
        return _guardians_page(
            student_id, errors={"email": e.public_message}, values=values, status=400
        )
    if info.restricted:
        flash(
            f"{info.email} is linked as {info.relationship.value}, and stays restricted: "
            "they see nothing of this student's records."
        )
    else:
        flash(f"{info.email} is linked as {info.relationship.value}.")
    return redirect(url_for("registrar.guardians", student_id=student_id))


@bp.post("/students/<uuid:student_id>/guardians/<uuid:guardian_id>/restrict")
def restrict_guardian(student_id: uuid.UUID, guardian_id: uuid.UUID) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    linked = {g.guardian_id: g for g in rt.students.list_guardians(actor, student_id)}
    if guardian_id not in linked:
        abort(404)
    field = f"reason-{guardian_id}"
    try:
        info = rt.students.restrict_guardian(
            actor, student_id, linked[guardian_id].email, pages.form_text("reason")
        )
    except InvalidInput as e:
        return _guardians_page(student_id, errors={field: e.public_message}, values={}, status=400)
    flash(f"{info.email} is restricted: they see nothing of this student's records.")
    return redirect(url_for("registrar.guardians", student_id=student_id))


@bp.post("/students/<uuid:student_id>/guardians/<uuid:guardian_id>/unlink")
def unlink_guardian(student_id: uuid.UUID, guardian_id: uuid.UUID) -> ResponseReturnValue:
    """End a guardian's link to the student: ask first, with the grants it revokes, then
    end it when the confirmation page sends ``confirm=yes``. A link ended already is
    reported as such, and nothing is changed."""
    actor = current_actor()
    rt = runtime()
    student = rt.students.get_student(actor, student_id)  # 404 for an unknown student
    linked = {g.guardian_id: g for g in rt.students.list_guardians(actor, student_id)}
    if guardian_id not in linked:
        abort(404)
    guardian = linked[guardian_id]
    back = url_for("registrar.guardians", student_id=student_id)
    ended_already = (
        f"{guardian.email}'s link to this student has ended already; nothing was changed."
    )
    if guardian.ended_at is not None:
        flash(ended_already)
        return redirect(back)
    if request.form.get("confirm") != "yes":
        in_force = [
            g for g in rt.grants.list_for_student(actor, student_id) if g.guardian_id == guardian_id
        ]
        return render_template(
            "registrar/unlink.html",
            title=f"End {guardian.email}'s link to {student.full_name}?",
            student=student,
            guardian=guardian,
            grants=in_force,
            back=back,
        )
    if not rt.students.unlink_guardian(actor, student_id, guardian.email):
        flash(ended_already)
        return redirect(back)
    flash(
        f"{guardian.email} is no longer linked to {student.full_name} and sees nothing of "
        "their records; the grants they held are revoked."
    )
    return redirect(back)


# Sharing -----------------------------------------------------------------------------------


@bp.get("/students/<uuid:student_id>/sharing")
def sharing(student_id: uuid.UUID) -> ResponseReturnValue:
    return _sharing_page(student_id, errors={}, values={"scope": "folder"})


def _sharing_page(
    student_id: uuid.UUID,
    *,
    errors: dict[str, str],
    values: dict[str, str],
    status: int = 200,
) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    student = rt.students.get_student(actor, student_id)
    linked = rt.students.list_guardians(actor, student_id)
    eligible = [g for g in linked if not g.restricted and g.ended_at is None]
    every = rt.grants.list_for_student(actor, student_id, include_inactive=True)
    page = render_template(
        "registrar/sharing.html",
        title=f"Sharing the folder of {student.full_name}",
        student=student,
        guardians=eligible,
        grants=[g for g in every if g.in_force],
        ended=[g for g in every if not g.in_force],
        document_groups=_by_category(rt.documents.list_folder(actor, student_id)),
        categories=CATEGORY_CHOICES,
        errors=errors,
        values=values,
    )
    return page if status == 200 else (page, status)


@bp.post("/students/<uuid:student_id>/grants")
def grant(student_id: uuid.UUID) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    rt.students.get_student(actor, student_id)  # 404 for an unknown student
    values = {
        name: pages.form_text(name)
        for name in ("guardian", "scope", "category", "document", "expires", "reason")
    }
    errors: dict[str, str] = {}
    category: Category | None = None
    document_id: uuid.UUID | None = None
    try:
        scope = GrantScope(values["scope"])
    except ValueError:
        scope = GrantScope.FOLDER
        errors["scope-folder"] = "Choose what to share."
    if scope is GrantScope.CATEGORY:
        try:
            category = parse_category(values["category"])
        except InvalidInput:
            errors["category"] = "Choose the category to share."
    if scope is GrantScope.DOCUMENT:
        try:
            document_id = uuid.UUID(values["document"])
        except ValueError:
            errors["document"] = "Choose the document to share."
    try:
        day = pages.parse_day(values["expires"])
    except ValueError:
        errors["expires"] = "Give the last day of access as a date, e.g. 2026-06-30."
        day = None
    if not values["guardian"]:
        errors["guardian"] = "Choose the guardian to share with."
    try:
        clean_text(values["reason"], "reason", max_length=500, required=False)
    except InvalidInput as e:
        errors["reason"] = e.public_message
    status = 400
    if not errors:
        try:
            info = rt.grants.grant(
                actor,
                values["guardian"],
                student_id,
                scope,
                category=category,
                document_id=document_id,
                expires_at=pages.end_of_day(day) if day else None,
                reason=values["reason"] or None,
            )
        except (InvalidInput, NotFound, Conflict) as e:
            # The reason and the form's fields are checked above: what is left is about
            # the expiry date, the document shared, or (most often) the guardian, and
            # a grant of the same scope the guardian has already (Conflict).
            field = "guardian"
            if "expiry" in e.public_message:
                field = "expires"
            elif isinstance(e, NotFound) and e.public_message.startswith("No such document"):
                field = "document"
            errors[field] = e.public_message
            status = 409 if isinstance(e, Conflict) else 400
        else:
            until = pages.until_text(info)
            flash(f"Shared {pages.scope_phrase(info)} with {info.guardian_email}{until}.")
            return redirect(url_for("registrar.sharing", student_id=student_id))
    return _sharing_page(student_id, errors=errors, values=values, status=status)


@bp.post("/students/<uuid:student_id>/grants/<uuid:grant_id>/revoke")
def revoke(student_id: uuid.UUID, grant_id: uuid.UUID) -> ResponseReturnValue:
    actor = current_actor()
    rt = runtime()
    grants = {g.id: g for g in rt.grants.list_for_student(actor, student_id, include_inactive=True)}
    if grant_id not in grants:
        abort(404)
    if not grants[grant_id].in_force:
        # A second click, or another registrar was quicker: nothing left to revoke. (A
        # restricted or former guardian's grant is in force, and can be revoked.)
        status = grants[grant_id].status.value
        flash(f"This access has ended already ({status}); nothing was changed.")
        return redirect(url_for("registrar.sharing", student_id=student_id))
    field = f"revoke-reason-{grant_id}"
    try:
        info = rt.grants.revoke(actor, grant_id, pages.form_text("reason"))
    except InvalidInput as e:
        return _sharing_page(
            student_id, errors={field: e.public_message}, values={"scope": "folder"}, status=400
        )
    still = rt.grants.still_sharing(actor, grant_id)
    if still:
        through = "; ".join(pages.scope_phrase(g) + pages.until_text(g) for g in still)
        flash(
            f"Revoked this grant of {pages.scope_phrase(info)}, but {info.guardian_email} "
            f"still sees it through another grant in force: {through}. Revoke that one "
            "too to end their access.",
            "error",
        )
    else:
        flash(f"Revoked: {info.guardian_email} no longer sees {pages.scope_phrase(info)}.")
    return redirect(url_for("registrar.sharing", student_id=student_id))
