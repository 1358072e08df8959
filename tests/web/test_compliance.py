from __future__ import annotations

import base64
import csv
import io
import re
import uuid
from datetime import timedelta
from html import unescape

import pytest
from flask import Flask

from audit.events import Action, Outcome
from folders.disclosures import DEFAULT_PURPOSE
from folders.errors import Forbidden, NotFound
from folders.runtime import Runtime
from tests.audit.test_tamper import DBA
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import Clock, events, post, share_folder, signed_in, upload_pdf

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


def _sequences(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<th scope="row">(\d+)</th>', html)]


def _story(runtime: Runtime, cast: Cast) -> None:
    """Upload, share, a guardian download, a revoke and a denied retry."""
    document, _ = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    runtime.documents.open(cast.parent, document.id)
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    runtime.grants.revoke(cast.registrar, grant.id, "Request closed")
    with pytest.raises(NotFound):
        runtime.documents.open(cast.parent, document.id)


def test_search_by_actor_action_outcome_student_and_dates(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    _story(runtime, cast)
    client = signed_in(app, cast.compliance.email)

    signed_in(app, cast.parent.email)
    by_actor = client.get("/compliance/", query_string={"actor": cast.parent.email.upper()})
    rows = _sequences(by_actor.get_data(as_text=True))
    mine = [e.sequence for e in runtime.audit_log.query(actor_email=cast.parent.email).items]
    assert rows == mine and len(rows) == 3  # login, denied retry, download: newest first
    assert "auth.login" in by_actor.get_data(as_text=True)

    html = client.get(
        "/compliance/", query_string={"student": cast.child.district_id, "action": "grant.revoke"}
    ).get_data(as_text=True)
    assert "1 event<" in html and "Request closed" in html

    denied = client.get("/compliance/", query_string={"outcome": "denied"}).get_data(as_text=True)
    assert "1 event<" in denied and ">access.denied</td>" in denied

    today = clock().date()
    in_range = client.get(
        "/compliance/",
        query_string={
            "since": today.isoformat(),
            "until": today.isoformat(),
            "action": "document.upload",
        },
    )
    assert "1 event<" in in_range.get_data(as_text=True)
    before = client.get(
        "/compliance/", query_string={"until": (today - timedelta(days=1)).isoformat()}
    )
    assert "0 events" in before.get_data(as_text=True)

    searches = events(runtime, Action.AUDIT_QUERY)
    assert len(searches) == 5 and searches[0].event.actor_email == cast.compliance.email


def test_only_a_student_who_exists_is_linked_from_the_trail(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)  # an event naming a real student
    probed = uuid.uuid4()
    with pytest.raises(NotFound):  # a guardian probing an id that names no one
        runtime.disclosures.for_guardian(cast.parent, probed)
    client = signed_in(app, cast.compliance.email)
    html = client.get("/compliance/").get_data(as_text=True)
    assert f'href="/compliance/students/{cast.child.id}/disclosures"' in html
    assert f"/compliance/students/{probed}/disclosures" not in html
    assert f'<span title="No such student: an id that names no record">{str(probed)[:8]}' in html
    assert runtime.disclosures.known_students(
        cast.compliance, [str(cast.child.id), str(probed), "not-an-id"]
    ) == {str(cast.child.id)}
    with pytest.raises(Forbidden):
        runtime.disclosures.known_students(cast.registrar, [str(cast.child.id)])


def test_search_form_errors_and_pagination(app: Flask, runtime: Runtime, cast: Cast) -> None:
    client = signed_in(app, cast.compliance.email)
    bad = client.get(
        "/compliance/",
        query_string={
            "student": "NO-SUCH",
            "document": "x",
            "since": "yesterday",
            "action": "nope",
        },
    )
    html = bad.get_data(as_text=True)
    assert bad.status_code == 400
    for field in ("student", "document", "since", "action"):
        assert f'id="{field}-error"' in html
    far = client.get("/compliance/", query_string={"until": "9999-12-31"})
    assert far.status_code == 400 and "must be before 9999-12-31" in far.text

    for n in range(60):
        runtime.students.add_student(cast.registrar, f"B-{n}", "Bulk", f"Student{n}")
    first = client.get("/compliance/", query_string={"action": "student.create"})
    page = first.get_data(as_text=True)
    assert "62 events" in page and "Page 1 of 2" in page and len(_sequences(page)) == 50
    second = client.get("/compliance/", query_string={"action": "student.create", "page": 2})
    assert len(_sequences(second.get_data(as_text=True))) == 12
    # A page past the last (a stale link) shows the last page.
    past = client.get("/compliance/", query_string={"action": "student.create", "page": 500})
    html = past.get_data(as_text=True)
    assert "Page 2 of 2" in html and _sequences(html) == _sequences(second.get_data(as_text=True))


def _link(html: str, rel: str) -> str:
    """The href of the pager link ``rel`` ("next" or "prev"), as the browser follows it."""
    match = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    assert match is not None, f"no {rel} link"
    return unescape(match.group(1))


def _heading(html: str) -> str:
    match = re.search(r"<h2>(\d+ events?)</h2>", html)
    assert match is not None
    return match.group(1)


def test_paging_a_search_shows_one_snapshot_while_events_are_recorded(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    for n in range(60):
        runtime.students.add_student(cast.registrar, f"B-{n}", "Bulk", f"Student{n}")
    client = signed_in(app, cast.compliance.email)

    first = client.get("/compliance/").get_data(as_text=True)
    head = runtime.audit_log.query(per_page=1).items[0].sequence
    shown_first = _sequences(first)
    # The first visit reads the log as it is, its own audit.query event included.
    assert shown_first == list(range(head, head - 50, -1))
    assert _heading(first) == f"{head} events" and f"upto={head}" in _link(first, "next")

    # Others keep working meanwhile; every page view is recorded too.
    runtime.students.add_student(cast.registrar, "LATE-1", "Late", "Arrival")
    second = client.get(_link(first, "next")).get_data(as_text=True)
    shown_second = _sequences(second)
    assert _heading(second) == f"{head} events"
    assert not set(shown_first) & set(shown_second)
    assert shown_second == list(range(head - 50, max(head - 100, 0), -1))

    runtime.students.add_student(cast.registrar, "LATE-2", "Late", "Arrival")
    back = client.get(_link(second, "prev")).get_data(as_text=True)
    assert _sequences(back) == shown_first and _heading(back) == f"{head} events"

    # A fresh search (the form, without upto) starts a new snapshot with all of it.
    fresh = client.get("/compliance/", query_string={"actor": ""}).get_data(as_text=True)
    newest = runtime.audit_log.query(per_page=1).items[0].sequence
    assert newest == head + 5  # two students, three searches
    assert _heading(fresh) == f"{newest} events" and _sequences(fresh)[0] == newest
    # The snapshot a page was read from is in the search's own audit event.
    searches = events(runtime, Action.AUDIT_QUERY)
    assert searches[1].event.detail == f"up_to_seq={head}"


def test_paging_a_filtered_search_keeps_its_filters_and_snapshot(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    for n in range(55):
        runtime.students.add_student(cast.registrar, f"B-{n}", "Bulk", f"Student{n}")
    client = signed_in(app, cast.compliance.email)
    first = client.get("/compliance/", query_string={"action": "student.create"}).text
    assert _heading(first) == "57 events"
    runtime.students.add_student(cast.registrar, "LATE", "Late", "Arrival")
    second = client.get(_link(first, "next")).text
    assert "action=student.create" in _link(first, "next")
    assert _heading(second) == "57 events" and len(_sequences(second)) == 7
    assert not set(_sequences(first)) & set(_sequences(second))


@pytest.mark.parametrize(
    "upto", ["0", "-1", "x", "1.5", "\u00b2", "\u0663", "9" * 40, str(2**63), "1e3"]
)
def test_a_bad_snapshot_bound_is_a_400_that_says_so(
    app: Flask, runtime: Runtime, cast: Cast, upto: str
) -> None:
    client = signed_in(app, cast.compliance.email)
    searches = len(events(runtime, Action.AUDIT_QUERY))
    for path in ("/compliance/", "/compliance/export.csv"):
        response = client.get(path, query_string={"upto": upto, "action": "auth.login"})
        assert response.status_code == 400, path
        assert "its snapshot (upto) must be an event number" in response.text
        assert 'href="#upto"' in response.text and 'id="upto"' in response.text
        # The form keeps the filters; searching again drops the bad bound.
        assert "<option selected>auth.login</option>" in response.text
    assert len(events(runtime, Action.AUDIT_QUERY)) == searches  # nothing was searched


def test_a_snapshot_bound_past_the_head_is_lowered_to_it(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    for n in range(55):
        runtime.students.add_student(cast.registrar, f"B-{n}", "Bulk", f"Student{n}")
    client = signed_in(app, cast.compliance.email)
    html = client.get("/compliance/", query_string={"upto": str(2**63 - 1)}).text
    head = runtime.audit_log.query(per_page=1).items[0].sequence
    assert _sequences(html)[0] == head and f"upto={head}" in _link(html, "next")


def test_an_export_with_a_snapshot_bound_stops_at_it(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    _story(runtime, cast)
    client = signed_in(app, cast.compliance.email)
    page = client.get("/compliance/", query_string={"student": cast.child.district_id}).text
    # The page's export link exports as of the click, its own record included ...
    export_link = re.search(r'href="(/compliance/export\.csv[^"]*)"', page)
    assert export_link is not None and "upto" not in export_link.group(1)
    # ... while a bound, when given, keeps to the snapshot.
    bound = runtime.audit_log.query(per_page=1).items[0].sequence
    response = client.get(
        "/compliance/export.csv",
        query_string={"student": cast.child.district_id, "upto": str(bound - 1)},
    )
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert rows and max(int(row["sequence"]) for row in rows) <= bound - 1
    assert "audit.export" not in {row["action"] for row in rows}
    detail = events(runtime, Action.AUDIT_EXPORT)[0].event.detail
    assert detail is not None and detail.endswith(f"up_to_seq={bound - 1}")


def test_export_csv_is_streamed_and_audited(app: Flask, runtime: Runtime, cast: Cast) -> None:
    _story(runtime, cast)
    client = signed_in(app, cast.compliance.email)
    response = client.get(
        "/compliance/export.csv", query_string={"student": cast.child.district_id}
    )
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    actions = [row["action"] for row in rows]
    for action in (
        "student.create",
        "document.upload",
        "grant.create",
        "document.download",
        "grant.revoke",
    ):
        assert action in actions
    assert {row["student_id"] for row in rows} == {str(cast.child.id)}
    # The export itself is recorded, before its rows were read, so it is in the file.
    assert actions[-1] == "audit.export"
    export_event = events(runtime, Action.AUDIT_EXPORT)[0].event
    assert export_event.student_id == str(cast.child.id)
    assert export_event.actor_email == cast.compliance.email


def test_verify_shows_result_and_latest_checkpoint(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    _story(runtime, cast)
    runtime.audit_log.checkpoint()
    client = signed_in(app, cast.compliance.email)
    before = client.get("/compliance/verify").get_data(as_text=True)
    assert "Events sealed" in before and "The log verifies" not in before

    html = post(client, "/compliance/verify").get_data(as_text=True)
    assert "The log verifies" in html
    size = runtime.audit_log.latest_checkpoint()
    assert size is not None and f"<dd>{size.checkpoint.tree_size}</dd>" in html
    [verified] = events(runtime, Action.AUDIT_VERIFY)
    assert verified.event.outcome is Outcome.ALLOWED and verified.event.detail.startswith("ok")


def _forge_latest_checkpoint(runtime: Runtime) -> int:
    """Replace the root hash in the newest SQL checkpoint's signed note, as a DBA could;
    its signature then no longer verifies. Returns the checkpoint's tree size."""
    signed = runtime.audit_log.checkpoint()
    size = signed.checkpoint.tree_size
    lines = signed.note.split(b"\n")
    lines[2] = base64.b64encode(bytes(32))  # origin, tree size, root hash, ...
    dba = DBA(runtime.engine)
    dba.disable_triggers()
    dba.run(
        "UPDATE audit_checkpoints SET note = :note WHERE tree_size = :size",
        note=b"\n".join(lines),
        size=size,
    )
    return size


def test_verify_page_works_when_the_latest_checkpoint_does_not_verify(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    _story(runtime, cast)
    size = _forge_latest_checkpoint(runtime)
    client = signed_in(app, cast.compliance.email)

    page = client.get("/compliance/verify")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "The latest checkpoint does not verify" in html and "satchel audit verify" in html
    assert "Events sealed" not in html  # the forged checkpoint is not shown as if fine
    assert 'action="/compliance/verify"' in html and "Verify now</button>" in html

    report = post(client, "/compliance/verify")
    html = report.get_data(as_text=True)
    assert report.status_code == 200
    assert "The log does not verify" in html and "(bad_signature)" in html
    assert f"First bad event: {size}</strong>" in html
    assert "Latest checkpoint that verifies" in html
    [verified] = events(runtime, Action.AUDIT_VERIFY)
    assert verified.event.outcome is Outcome.ERROR
    assert verified.event.detail.startswith(f"failed at event {size}")


def test_a_damaged_event_is_an_integrity_error_not_a_page_of_results(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    _story(runtime, cast)
    [download] = events(runtime, Action.DOCUMENT_DOWNLOAD)
    dba = DBA(runtime.engine)
    dba.disable_triggers()
    dba.run(
        "UPDATE audit_events SET entry = :entry WHERE sequence = :sequence",
        entry=b'{"not": "an audit entry"}',
        sequence=download.sequence,
    )
    compliance = signed_in(app, cast.compliance.email)
    parent = signed_in(app, cast.parent.email)
    for client, url in (
        (compliance, "/compliance/"),
        (compliance, f"/compliance/?student={cast.child.district_id}"),
        (compliance, "/compliance/export.csv"),
        (compliance, f"/compliance/students/{cast.child.id}/disclosures"),
        (parent, f"/guardian/students/{cast.child.id}/history"),
    ):
        response = client.get(url)
        html = response.get_data(as_text=True)
        assert response.status_code == 500, url
        assert response.mimetype == "text/html", url
        assert "<h1>The audit trail failed an integrity check</h1>" in html, url
        assert "run `satchel audit verify`" in html, url
        assert '<th scope="row">' not in html and "Something went wrong" not in html, url


def test_printable_record_of_disclosures(app: Flask, runtime: Runtime, cast: Cast) -> None:
    _story(runtime, cast)
    document = runtime.documents.list_folder(cast.registrar, cast.child.id)[0]
    runtime.documents.open(cast.registrar, document.id, purpose=DEFAULT_PURPOSE)
    client = signed_in(app, cast.compliance.email)

    found = client.get(
        "/compliance/disclosures", query_string={"district_id": cast.child.district_id}
    )
    assert found.status_code == 302
    html = client.get(found.headers["Location"]).get_data(as_text=True)
    assert "Record of disclosures" in html and "Lucia Lopez" in html
    for text in (
        "Downloaded a document",
        cast.parent.email,
        DEFAULT_PURPOSE,
        "Shared records with a guardian",
        "Request closed",
    ):
        assert text in html
    assert "Amara" not in html
    unknown = client.get("/compliance/disclosures", query_string={"district_id": "NOPE"})
    assert unknown.status_code == 404
    summary = re.search(r'<div class="error-summary" role="alert".*?</div>', unknown.text, re.S)
    assert summary is not None and 'href="#district_id"' in summary.group(0)
    assert events(runtime, Action.AUDIT_QUERY)[0].event.student_id == str(cast.child.id)
    with client.get("/static/satchel.css") as css:
        assert "@media print" in css.get_data(as_text=True)


def test_compliance_cannot_open_records(app: Flask, runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    client = signed_in(app, cast.compliance.email)
    url = f"/registrar/documents/{document.id}/versions/{document.current.id}"
    assert client.get(url, query_string={"purpose": DEFAULT_PURPOSE}).status_code == 403
    assert client.get(f"/guardian/documents/{document.id}/download").status_code == 403
