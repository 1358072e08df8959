from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from flask import Flask

from audit.events import Action, Outcome
from folders.categories import Category
from folders.disclosures import DEFAULT_PURPOSE
from folders.grants import GUARDIANSHIP_ENDED
from folders.models import GrantScope
from folders.runtime import Runtime
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import Clock, events, share_folder, signed_in, upload_pdf

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


def _titles(html: str) -> list[str]:
    return re.findall(
        r'<h2 class="card-title">(?:<span class="badge badge-new">New</span> )?'
        r"([^<]+)</h2>",
        html,
    )


def test_shared_documents_newest_first_marked_new_since_the_last_visit(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    upload_pdf(runtime, cast, cast.child, "Older report")
    clock.advance(timedelta(hours=1))
    upload_pdf(runtime, cast, cast.child, "Newer report")
    upload_pdf(runtime, cast, cast.other_child, "Not yours")
    clock.advance(timedelta(hours=1))
    share_folder(runtime, cast, cast.child, cast.parent.email)
    client = signed_in(app, cast.parent.email)

    first = client.get("/guardian/").get_data(as_text=True)
    # Shared at the same moment (the folder grant), so the newer upload comes first.
    assert _titles(first) == ["Newer report", "Older report"]
    assert first.count("badge-new") == 2 and "2 new since your first visit" in first

    clock.advance(timedelta(hours=1))
    second = client.get("/guardian/").get_data(as_text=True)
    assert "badge-new" not in second and "Nothing new since your last visit" in second

    clock.advance(timedelta(hours=1))
    upload_pdf(runtime, cast, cast.child, "Newest report", Category.HEALTH)
    third = client.get("/guardian/").get_data(as_text=True)
    assert _titles(third) == ["Newest report", "Newer report", "Older report"]
    assert third.count("badge-new") == 1 and "Not yours" not in third


def test_view_inline_and_download_are_audited_and_identical(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, data = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    client = signed_in(app, cast.parent.email)

    viewed = client.get(f"/guardian/documents/{document.id}/view")
    assert viewed.status_code == 200 and viewed.get_data() == data
    assert viewed.headers["Content-Type"] == "application/pdf"
    assert viewed.headers["Content-Disposition"] == (
        "inline; filename=\"record.pdf\"; filename*=UTF-8''record.pdf"
    )
    assert events(runtime, Action.DOCUMENT_PREVIEW)[0].event.actor_email == cast.parent.email

    downloaded = client.get(f"/guardian/documents/{document.id}/download")
    assert hashlib.sha256(downloaded.get_data()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert downloaded.headers["Content-Disposition"].startswith("attachment;")
    assert downloaded.headers["Cache-Control"] == "no-store"
    assert downloaded.headers["X-Content-Type-Options"] == "nosniff"
    assert downloaded.headers["Content-Length"] == str(len(data))
    recorded = events(runtime, Action.DOCUMENT_DOWNLOAD)[0].event
    assert (recorded.actor_email, recorded.document_id) == (cast.parent.email, str(document.id))


def test_revoked_expired_and_restricted_access_is_404_on_the_next_request(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.DOCUMENT,
        document_id=document.id,
        expires_at=clock() + timedelta(days=1),
    )
    client = signed_in(app, cast.parent.email)
    url = f"/guardian/documents/{document.id}/download"
    assert client.get(url).status_code == 200

    clock.advance(timedelta(days=1))
    assert client.get(url).status_code == 404
    assert "Report card" not in client.get("/guardian/").get_data(as_text=True)

    share_folder(runtime, cast, cast.child, cast.parent.email)
    assert client.get(url).status_code == 200
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    runtime.grants.revoke(cast.registrar, grant.id, "Records request closed")
    assert client.get(url).status_code == 404

    share_folder(runtime, cast, cast.child, cast.parent.email)
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order"
    )
    assert client.get(url).status_code == 404
    assert client.get(f"/guardian/students/{cast.child.id}/history").status_code == 404
    denied = [e.event for e in events(runtime, Action.ACCESS_DENIED)]  # newest first
    assert all(e.outcome is Outcome.DENIED for e in denied)
    assert all(e.actor_email == cast.parent.email for e in denied)
    assert [(e.student_id, e.document_id, e.detail) for e in denied] == [
        (str(cast.child.id), None, "record of disclosures: guardian_restricted"),
        (str(cast.child.id), str(document.id), "document.download: guardian_restricted"),
        (str(cast.child.id), str(document.id), "document.download: grant_revoked"),
        (str(cast.child.id), str(document.id), "document.download: grant_expired"),
    ]


def test_access_history_shows_staff_actions_not_other_guardians(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child, "Progress report")
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    share_folder(runtime, cast, cast.child, cast.other_parent.email)
    runtime.documents.open(cast.registrar, document.id, purpose=DEFAULT_PURPOSE)
    runtime.documents.open(cast.other_parent, document.id)  # another guardian's own download

    client = signed_in(app, cast.parent.email)
    html = client.get(f"/guardian/students/{cast.child.id}/history").get_data(as_text=True)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)[1:]  # without the header row
    assert len(rows) == 2, rows
    assert "Downloaded a document" in rows[0] and DEFAULT_PURPOSE in rows[0]
    assert "Progress report" in rows[0] and cast.registrar.email in rows[0]
    assert "Shared records with you" in rows[1]
    assert cast.other_parent.email not in html  # neither their grant nor their download
    assert not any("(guardian)" in row for row in rows)
    # A page past the last (a stale link) shows the last page, not "no one looked yet".
    stale = client.get(f"/guardian/students/{cast.child.id}/history?page=999")
    assert re.findall(r"<tr[^>]*>(.*?)</tr>", stale.get_data(as_text=True), re.S)[1:] == rows


def test_access_history_pages_carry_their_snapshot(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child, "Progress report")
    share_folder(runtime, cast, cast.child, cast.parent.email)
    for _ in range(60):  # more than one page of 50
        runtime.documents.open(cast.registrar, document.id, purpose=DEFAULT_PURPOSE)
    client = signed_in(app, cast.parent.email)
    url = f"/guardian/students/{cast.child.id}/history"
    first = client.get(url).get_data(as_text=True)
    found = re.search(r'href="([^"]*upto=\d+[^"]*)" rel="next"', first)
    assert found is not None, first
    runtime.documents.open(cast.registrar, document.id, purpose=DEFAULT_PURPOSE)  # meanwhile
    second = client.get(found.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert len(_history_rows(first)) == 50 and len(_history_rows(second)) == 11
    assert "Page 2 of 2" in second
    # A damaged snapshot is ignored, as a damaged page number is: the newest entries.
    assert len(_history_rows(client.get(f"{url}?upto=x").get_data(as_text=True))) == 50


def _history_rows(html: str) -> list[str]:
    return re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)[1:]  # without the header row


def test_access_history_says_nothing_of_documents_not_shared_with_the_guardian(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    report, _ = upload_pdf(runtime, cast, cast.child, "Spring report card")
    behaviour, _ = upload_pdf(
        runtime, cast, cast.child, "Behaviour incident 14 March", Category.BEHAVIOR
    )
    runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.REPORT_CARD,
    )
    # A second guardian of the child, linked but given nothing.
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    runtime.documents.open(cast.registrar, report.id, purpose=DEFAULT_PURPOSE)
    runtime.documents.open(cast.registrar, behaviour.id, purpose="Correction or review")
    url = f"/guardian/students/{cast.child.id}/history"

    html = signed_in(app, cast.parent.email).get(url).get_data(as_text=True)
    rows = _history_rows(html)
    assert len(rows) == 2, rows
    assert "Downloaded a document" in rows[0] and "Spring report card" in rows[0]
    assert "Shared records with you" in rows[1]
    nothing = signed_in(app, cast.other_parent.email).get(url).get_data(as_text=True)
    assert _history_rows(nothing) == []
    assert "No one on the school's staff has looked at or shared these records yet" in nothing
    for page in (html, nothing):
        assert "Behaviour incident" not in page and "Correction or review" not in page


def test_ending_and_relinking_a_guardianship_does_not_bring_back_their_access(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child, "Report card")
    share_folder(runtime, cast, cast.child, cast.parent.email)
    runtime.documents.open(cast.registrar, document.id, purpose=DEFAULT_PURPOSE)
    client = signed_in(app, cast.parent.email)
    url = f"/guardian/documents/{document.id}/download"
    assert client.get(url).status_code == 200
    history_url = f"/guardian/students/{cast.child.id}/history"
    assert "Report card" in client.get(history_url).get_data(as_text=True)

    runtime.students.unlink_guardian(cast.registrar, cast.child.id, cast.parent.email)
    assert client.get(url).status_code == 404
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.parent.email)
    assert client.get(url).status_code == 404
    assert "Report card" not in client.get("/guardian/").get_data(as_text=True)

    [revoke] = [e.event for e in events(runtime, Action.GRANT_REVOKE)]
    assert (revoke.student_id, revoke.detail, revoke.actor_email) == (
        str(cast.child.id),
        GUARDIANSHIP_ENDED,
        cast.registrar.email,
    )
    history = client.get(history_url).get_data(as_text=True)
    rows = _history_rows(history)
    assert "Ended your access to shared records" in rows[0]
    assert "Report card" not in history  # the staff download of it is no longer theirs to see


def test_a_document_whose_object_is_lost_is_a_server_fault_not_a_sharing_question(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child, "Report card")
    share_folder(runtime, cast, cast.child, cast.parent.email)
    [stored] = [info.key for info in runtime.store.list("versions/")]
    runtime.store.delete(stored)

    client = signed_in(app, cast.parent.email)
    response = client.get(f"/guardian/documents/{document.id}/download")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "missing from the document store" in html
    assert "ends the sharing" not in html  # not the not-found page's hint about grants
    [event] = events(runtime, Action.DOCUMENT_DOWNLOAD)
    assert event.event.outcome is Outcome.ERROR


def test_a_guardian_sees_only_their_own_students(app: Flask, runtime: Runtime, cast: Cast) -> None:
    client = signed_in(app, cast.parent.email)
    html = client.get("/guardian/").get_data(as_text=True)
    assert "Lucia Lopez" in html and "Amara" not in html
    other = client.get(f"/guardian/students/{cast.other_child.id}/history")
    assert other.status_code == 404 and "ends the sharing" in other.text
    [denied] = [e.event for e in events(runtime, Action.ACCESS_DENIED)]
    assert (denied.outcome, denied.actor_email, denied.student_id, denied.detail) == (
        Outcome.DENIED,
        cast.parent.email,
        str(cast.other_child.id),
        "record of disclosures: not_guardian_of_student",
    )
