"""Compliance pages. Every route needs a signed-in compliance officer (deny by default).

Search the audit trail, verify the log, export CSV, and print a student's record of
disclosures. Compliance reads the trail, never the records themselves.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from datetime import timedelta

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from audit.errors import AuditIntegrityError
from audit.events import Action, Outcome
from audit.export import ExportFormat
from folders.errors import NotFound
from folders.models import Role
from folders.trail import TrailQuery
from web import pages
from web.auth import current_actor, guard_role
from web.context import runtime

log = logging.getLogger(__name__)

bp = Blueprint("compliance", __name__, url_prefix="/compliance")
guard_role(bp, Role.COMPLIANCE)

FILTER_FIELDS = ("actor", "student", "document", "action", "outcome", "since", "until")
MAX_EMAIL_LENGTH = 254  # RFC 5321; the audit log's actor_email holds no more
UPTO_ERROR = (
    "This link to a page of results is damaged: its snapshot (upto) must be an event "
    "number, a whole number from 1."
)


def _parse_filters() -> tuple[TrailQuery, dict[str, str], dict[str, str]]:
    """The search form's values, the query they make, and errors keyed by field id.

    ``upto`` is not a form field: the pages of one search carry it (see :func:`home`),
    and its error is keyed ``upto``.
    """
    values = {name: request.args.get(name, "").strip() for name in FILTER_FIELDS}
    errors: dict[str, str] = {}
    up_to_seq = None
    try:
        up_to_seq = pages.snapshot_bound()
    except ValueError:
        errors["upto"] = UPTO_ERROR
    if len(values["actor"]) > MAX_EMAIL_LENGTH:
        errors["actor"] = f"An email address has at most {MAX_EMAIL_LENGTH} characters."
    student_id = None
    if values["student"]:
        try:
            student_id = uuid.UUID(values["student"])
        except ValueError:
            try:
                student_id = (
                    runtime().disclosures.find_student(current_actor(), values["student"]).id
                )
            except NotFound as e:
                errors["student"] = e.public_message
    document_id = None
    if values["document"]:
        try:
            document_id = uuid.UUID(values["document"])
        except ValueError:
            errors["document"] = "A document id looks like 1b4e28ba-2fa1-11d2-883f-0016d3cca427."
    action = outcome = None
    if values["action"]:
        try:
            action = Action(values["action"])
        except ValueError:
            errors["action"] = "Choose an action from the list."
    if values["outcome"]:
        try:
            outcome = Outcome(values["outcome"])
        except ValueError:
            errors["outcome"] = "Choose an outcome from the list."
    since = until = None
    try:
        day = pages.parse_day(values["since"])
        since = pages.start_of_day(day) if day else None
    except ValueError:
        errors["since"] = "Give the first day as a date, e.g. 2026-01-31."
    try:
        day = pages.parse_day(values["until"])
        # The form's last day is included: the query's bound is the next midnight.
        until = pages.start_of_day(day) + timedelta(days=1) if day else None
    except ValueError:
        errors["until"] = "Give the last day as a date, e.g. 2026-01-31."
    except OverflowError:  # 9999-12-31 has no next midnight
        errors["until"] = "The last day must be before 9999-12-31."
    if since and until and since >= until:
        errors["until"] = "The last day must not be before the first day."
    query = TrailQuery(
        actor_email=values["actor"].lower() or None,
        student_id=student_id,
        document_id=document_id,
        action=action,
        outcome=outcome,
        since=since,
        until=until,
        up_to_seq=up_to_seq,
    )
    return query, values, errors


@bp.get("/")
def home() -> ResponseReturnValue:
    """Search the trail, newest first, one page at a time, from a snapshot.

    A search without ``upto`` (the form, the first visit) reads the log as it is now;
    its page links carry the bound that page was read at (``upto``), so every page of
    it lists the same events and total however many are recorded meanwhile, its own
    ``audit.query`` events included. 400 for a bad filter or ``upto``.
    """
    query, values, errors = _parse_filters()
    results = None
    if not errors:
        results = runtime().trail.search(current_actor(), query, page=pages.page_number())
    filter_args = {k: v for k, v in values.items() if v}
    page_args = dict(filter_args)
    if results is not None and results.up_to_seq:
        page_args["upto"] = str(results.up_to_seq)
    known: frozenset[str] = frozenset()
    if results is not None:
        named = {e.event.student_id for e in results.items if e.event.student_id}
        known = runtime().disclosures.known_students(current_actor(), named)
    page = render_template(
        "compliance/home.html",
        title="Audit trail",
        values=values,
        errors=errors,
        results=results,
        actions=[a.value for a in Action],
        outcomes=[o.value for o in Outcome],
        filter_args=filter_args,
        page_args=page_args,
        known_students=known,
    )
    return (page, 400) if errors else page


@bp.get("/export.csv")
def export_csv() -> ResponseReturnValue:
    """The matching events as CSV, streamed; the export itself is audited first.

    The search page links here without ``upto``: the export lists the matching events
    as of the moment it is made, its own ``audit.export`` event included. An ``upto``,
    when given, bounds it as it bounds the search (400 when bad).
    """
    query, _, errors = _parse_filters()
    if errors:
        return home()  # the search page, showing what is wrong with the filters
    chunks = runtime().trail.export(current_actor(), query, ExportFormat.CSV)
    # The first batch is read here, before the status line is sent: a damaged event in
    # it (or a failure to read) gets its error page instead of a 200 with a cut-off file.
    # A failure further on can only cut the download off, which the browser reports.
    first = next(chunks, b"")
    response = Response(itertools.chain((first,), chunks), mimetype="text/csv")
    close = getattr(chunks, "close", None)
    if close is not None:
        response.call_on_close(close)  # a client that goes away frees the connection
    response.headers["Content-Disposition"] = 'attachment; filename="satchel-audit.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/verify", methods=["GET", "POST"])
def verify() -> str:
    actor = current_actor()
    result = runtime().trail.verify(actor) if request.method == "POST" else None
    latest = result.latest_checkpoint if result else None
    latest_does_not_verify = False
    if result is None:
        try:
            latest = runtime().trail.latest_checkpoint(actor)
        except AuditIntegrityError as e:
            # A stored checkpoint whose signature does not verify (a DBA edited the
            # table) must not take this page down with it: verifying is how an officer
            # finds out what happened. An outage still raises (503).
            log.error("audit trail integrity check failed: %s", e)
            latest_does_not_verify = True
    return render_template(
        "compliance/verify.html",
        title="Verify the audit log",
        result=result,
        latest=latest,
        latest_does_not_verify=latest_does_not_verify,
    )


@bp.get("/disclosures")
def disclosures_find() -> ResponseReturnValue:
    district_id = request.args.get("district_id", "").strip()
    error = None
    if district_id:
        try:
            found = runtime().disclosures.find_student(current_actor(), district_id)
        except NotFound as e:
            error = e.public_message
        else:
            return redirect(url_for("compliance.disclosure_record", student_id=found.id))
    page = render_template(
        "compliance/disclosures.html",
        title="Records of disclosures",
        district_id=district_id,
        error=error,
    )
    return (page, 404) if error else page


@bp.get("/students/<uuid:student_id>/disclosures")
def disclosure_record(student_id: uuid.UUID) -> str:
    record = runtime().disclosures.for_compliance(current_actor(), student_id)
    return render_template(
        "compliance/record.html",
        title=f"Record of disclosures: {record.student.full_name}",
        record=record,
        printed_at=runtime().clock(),
    )
