from __future__ import annotations

import hashlib
import html
import io
import math
import os
import re
import tempfile
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage
from werkzeug.test import EnvironBuilder, TestResponse, encode_multipart

from audit.errors import AuditUnavailable
from audit.events import Action
from folders.actor import Actor
from folders.categories import Category
from folders.disclosures import DEFAULT_PURPOSE
from folders.forms import new_form_id
from folders.grants import GrantStatus
from folders.models import GrantScope
from folders.runtime import Runtime
from storage.errors import StorageUnavailable
from storage.ingest import SpoolFile
from tests.support import samples
from tests.support.disks import open_files_in
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import Clock, events, post, share_folder, signed_in, upload_pdf
from web import registrar

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


def test_find_students_by_name_and_id_paginated(app: Flask, runtime: Runtime, cast: Cast) -> None:
    for n in range(27):
        runtime.students.add_student(cast.registrar, f"P-{n:03d}", f"Pat{n:02d}", "Paginated")
    client = signed_in(app, cast.registrar.email)

    by_name = client.get("/registrar/?q=lucia").get_data(as_text=True)
    assert "Lopez, Lucia" in by_name and "Okafor" not in by_name
    assert "Okafor, Amara" in client.get("/registrar/?q=S-2").get_data(as_text=True)

    first = client.get("/registrar/?q=paginated").get_data(as_text=True)
    assert "27 students" in first and "Page 1 of 2" in first
    assert first.count("Paginated, Pat") == 25
    second = client.get("/registrar/?q=paginated&page=2").get_data(as_text=True)
    assert second.count("Paginated, Pat") == 2 and 'rel="prev"' in second
    past = client.get("/registrar/?q=paginated&page=5").get_data(as_text=True)
    assert "Page 2 of 2" in past and past.count("Paginated, Pat") == 2  # the last page


def test_multi_file_upload_stores_good_files_and_reports_each_refusal(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/upload"
    assert client.get(url).status_code == 200
    response = post(
        client,
        url,
        {
            "form": "multi",
            "category": "report_card",
            "school_year": "2025-2026",
            "files": [
                (io.BytesIO(samples.make_pdf(pages=1)), "fall_report_card.pdf"),
                (io.BytesIO(samples.html_document()), "sneaky.pdf"),
                (io.BytesIO(samples.make_png()), "scan-2.png"),
            ],
        },
        content_type="multipart/form-data",
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "2 files were stored" in html and "1 file was not stored" in html
    rejected = re.search(r'<div role="alert" class="rejected">(.*?)</div>', html, re.S)
    assert rejected is not None and "sneaky.pdf" in rejected.group(1)
    assert "fall report card" in html  # titles default from file names
    folder = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert sorted(d.title for d in folder) == ["fall report card", "scan-2"]
    assert all(d.category is Category.REPORT_CARD and d.school_year == "2025-2026" for d in folder)


def test_sending_an_upload_form_again_stores_nothing_twice(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/upload"
    form_id = re.compile(r'name="upload_id" value="([0-9a-f]{32})"')
    first_id, other_id = form_id.findall(client.get(url).text)  # one per form

    def send(upload_id: str, *names: str) -> TestResponse:
        files = [(io.BytesIO(samples.make_pdf(pages=1, text=n)), f"{n}.pdf") for n in names]
        form = {"form": "multi", "category": "report_card", "upload_id": upload_id}
        return post(client, url, {**form, "files": files}, content_type="multipart/form-data")

    stored = send(first_id, "fall", "spring")
    assert stored.status_code == 200 and "2 files were stored" in stored.text
    # Reloading the results page sends the same form, with the same id, again.
    again = send(first_id, "fall", "spring")
    assert again.status_code == 409
    assert "These files were sent already" in again.text
    assert len(runtime.documents.list_folder(cast.registrar, cast.child.id)) == 2
    # The results page's forms are new ones; so is the other form of the first page.
    [next_id, _] = form_id.findall(stored.text)
    assert next_id not in (first_id, other_id)
    assert send(next_id, "winter").status_code == 200
    assert send(other_id, "summer").status_code == 200
    titles = sorted(d.title for d in runtime.documents.list_folder(cast.registrar, cast.child.id))
    assert titles == ["fall", "spring", "summer", "winter"]
    # A form that stored nothing may be sent again: there is nothing to store twice.
    refused = post(
        client,
        url,
        {
            "form": "single",
            "category": "report_card",
            "upload_id": next_id[::-1],
            "files": (io.BytesIO(samples.html_document()), "sneaky.pdf"),
        },
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422
    assert send(next_id[::-1], "autumn").status_code == 200

    # The claim lives in the database, not in this browser's session: the same form sent
    # from another session (another worker, a copied request) stores nothing either,
    # and neither does a twin sent while the first request is still storing.
    elsewhere = signed_in(app, cast.registrar.email)
    files = {"files": (io.BytesIO(samples.make_pdf(pages=1, text="x")), "x.pdf")}
    form = {"form": "single", "category": "report_card", "upload_id": first_id, **files}
    twin = post(elsewhere, url, form, content_type="multipart/form-data")
    assert twin.status_code == 409 and "These files were sent already" in twin.text
    in_flight = new_form_id()
    assert runtime.upload_forms.claim(cast.registrar, in_flight)  # the first request
    assert send(in_flight, "twin").status_code == 409
    damaged = send("not-a-form-id", "damaged")
    assert damaged.status_code == 400 and "open the upload page again" in damaged.text
    assert len(runtime.documents.list_folder(cast.registrar, cast.child.id)) == 5


@pytest.mark.parametrize("failing", ["object store", "audit log"])
def test_multi_file_upload_stopped_by_a_failure_says_which_files_are_stored(
    app: Flask, runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The files before the failure stay stored and the page says so: no "nothing was
    changed" for an upload that changed something, and no half-stored second file."""
    calls = 0

    def second_document_fails(
        original: Callable[..., Any], error: Exception, *, key_prefix: str = ""
    ) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            # The store also receives audit checkpoints: only documents' objects count.
            if str(args[0]).startswith(key_prefix):
                calls += 1
                if calls == 2:
                    raise error
            return original(*args, **kwargs)

        return call

    if failing == "object store":
        store = runtime.vault.store
        error: Exception = StorageUnavailable("s3.example", "connection refused")
        put = second_document_fails(store.put, error, key_prefix="versions/")
        monkeypatch.setattr(store, "put", put)
    else:
        log = runtime.audit_log
        error = AuditUnavailable("the audit insert failed")
        monkeypatch.setattr(log, "append", second_document_fails(log.append, error))
    client = signed_in(app, cast.registrar.email)
    response = post(
        client,
        f"/registrar/students/{cast.child.id}/upload",
        {
            "form": "multi",
            "category": "report_card",
            "school_year": "2025-2026",
            "files": [
                (io.BytesIO(samples.make_pdf(pages=1, text=f"page {n}")), f"card_{n}.pdf")
                for n in (1, 2, 3)
            ],
        },
        content_type="multipart/form-data",
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 503, html
    assert "1 file was stored" in html and "2 files were not stored" in html
    rejected = re.search(r'<div role="alert" class="rejected">(.*?)</div>', html, re.S)
    assert rejected is not None
    assert f"<strong>card_2.pdf</strong>: {type(error).public_message}" in rejected.group(1)
    assert "<strong>card_3.pdf</strong>: Not tried" in rejected.group(1)
    assert "nothing was changed" not in html.lower()
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert document.title == "card 1"
    assert len(list(runtime.store.list("versions/"))) == 1  # no object of card_2.pdf
    uploads = events(runtime, Action.DOCUMENT_UPLOAD)
    assert [e.event.document_id for e in uploads] == [str(document.id)]


def test_a_file_whose_key_version_is_retired_while_it_is_stored_is_reported_and_the_rest_stored(
    app: Flask, runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime.vault.store
    put = store.put

    def put_then_retire(*args: Any, **kwargs: Any) -> Any:
        result = put(*args, **kwargs)
        if str(args[0]).startswith("versions/"):
            monkeypatch.setattr(store, "put", put)  # once, while the first file is stored
            operator = Actor.operator()
            runtime.keys.rotate(operator)
            runtime.keys.retire_below(operator, 2)
        return result

    monkeypatch.setattr(store, "put", put_then_retire)
    client = signed_in(app, cast.registrar.email)
    response = post(
        client,
        f"/registrar/students/{cast.child.id}/upload",
        {
            "form": "multi",
            "category": "report_card",
            "school_year": "2025-2026",
            "files": [
                (io.BytesIO(samples.make_pdf(pages=1, text=f"page {n}")), f"card_{n}.pdf")
                for n in (1, 2)
            ],
        },
        content_type="multipart/form-data",
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html  # one file stored
    rejected = re.search(r'<div role="alert" class="rejected">(.*?)</div>', html, re.S)
    assert rejected is not None
    assert (
        "<strong>card_1.pdf</strong>: The encryption key was retired while this file was being "
        "stored, so it was not stored. Upload it again." in rejected.group(1)
    )
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert document.title == "card 2"
    assert len(list(runtime.store.list("versions/"))) == 1  # no object of card_1.pdf


def test_single_upload_uses_the_title_and_all_refused_is_422(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/upload"
    ok = post(
        client,
        url,
        {
            "form": "single",
            "title": "Immunization record",
            "category": "immunization",
            "school_year": "",
            "files": (io.BytesIO(samples.make_pdf(pages=1)), "imm.pdf"),
        },
        content_type="multipart/form-data",
    )
    assert ok.status_code == 200
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert (document.title, document.school_year) == ("Immunization record", None)
    # Stored: the form is ready for the next file, which needs a title of its own.
    assert 'value="Immunization record"' not in ok.get_data(as_text=True)

    refused = post(
        client,
        url,
        {
            "form": "single",
            "title": "",
            "category": "health",
            "school_year": "2025-2026",
            "files": (io.BytesIO(samples.pdf_with_open_action_javascript()), "nurse.pdf"),
        },
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422
    assert "JavaScript" in refused.get_data(as_text=True)
    assert len(runtime.documents.list_folder(cast.registrar, cast.child.id)) == 1


def test_upload_form_errors_are_tied_to_their_fields(app: Flask, cast: Cast) -> None:
    client = signed_in(app, cast.registrar.email)
    response = post(
        client,
        f"/registrar/students/{cast.child.id}/upload",
        {
            "form": "multi",
            "category": "no-such-thing",
            "school_year": "2025-2027",
        },
        content_type="multipart/form-data",
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    for field in ("multi-category", "multi-school_year", "multi-files"):
        assert f'id="{field}-error"' in html
        assert re.search(rf'id="{field}"[^>]*aria-describedby="[^"]*{field}-error', html, re.S)
    assert 'href="#multi-category"' in html  # the error summary links to the field


def test_folder_by_category_with_versions_and_corrected_version(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    report, _ = upload_pdf(runtime, cast, cast.child)
    upload_pdf(runtime, cast, cast.child, "Hearing screening", Category.HEALTH)
    client = signed_in(app, cast.registrar.email)
    folder = client.get(f"/registrar/students/{cast.child.id}").get_data(as_text=True)
    assert folder.index("Report card</h2>") < folder.index("Health record</h2>")

    corrected = samples.make_pdf(pages=3, text="corrected")
    response = post(
        client,
        f"/registrar/documents/{report.id}/versions",
        {"file": (io.BytesIO(corrected), "corrected.pdf")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    page = client.get(f"/registrar/documents/{report.id}").get_data(as_text=True)
    assert "Version 2 (current)" in page and "Version 1" in page and "corrected.pdf" in page
    assert events(runtime, Action.DOCUMENT_METADATA)[0].event.document_id == str(report.id)

    refused = post(
        client,
        f"/registrar/documents/{report.id}/versions",
        {"file": (io.BytesIO(samples.zip_archive()), "c.pdf")},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422 and 'id="file-error"' in refused.get_data(as_text=True)


def test_a_long_folder_is_paged_and_narrowed_to_one_category(
    app: Flask, runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registrar, "FOLDER_PAGE_SIZE", 3)
    titles = [f"Progress report {n}" for n in range(4)]
    for title in titles:
        upload_pdf(runtime, cast, cast.child, title, Category.PROGRESS_REPORT)
    upload_pdf(runtime, cast, cast.child, "Hearing screening", Category.HEALTH)
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}"
    views = len(events(runtime, Action.FOLDER_VIEW))

    first = client.get(url).get_data(as_text=True)
    second = client.get(f"{url}?page=2").get_data(as_text=True)
    assert "5 documents; 1 to 3 on this page." in first and "Page 1 of 2" in first
    assert "4 to 5 on this page." in second and 'rel="prev"' in second
    assert f'href="{url}?page=2" rel="next"' in first

    def listed(page: str) -> list[str]:
        return re.findall(r">([^<>]+)</a></th>", page)

    assert len(listed(first)) == 3
    assert sorted(listed(first) + listed(second)) == sorted([*titles, "Hearing screening"])

    health = client.get(f"{url}?category=health").get_data(as_text=True)
    assert "1 document in Health record." in health and listed(health) == ["Hearing screening"]
    assert '<option value="health" selected>' in health
    empty = client.get(f"{url}?category=iep").get_data(as_text=True)
    assert "No documents in" in empty and "Show all categories" in empty
    unknown = client.get(f"{url}?category=diary")
    assert unknown.status_code == 400 and "Unknown category" in unknown.get_data(as_text=True)
    assert len(events(runtime, Action.FOLDER_VIEW)) == views + 4


def test_staff_open_a_version_for_a_stated_purpose(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, data = upload_pdf(runtime, cast, cast.child)
    version = document.current.id
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/documents/{document.id}/versions/{version}"
    assert client.get(url).status_code == 400  # no purpose
    assert client.get(url, query_string={"purpose": "curiosity"}).status_code == 400

    response = client.get(url, query_string={"purpose": DEFAULT_PURPOSE, "mode": "download"})
    assert response.status_code == 200
    assert hashlib.sha256(response.get_data()).digest() == hashlib.sha256(data).digest()
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    recorded = events(runtime, Action.DOCUMENT_DOWNLOAD)[0].event
    assert (recorded.purpose, recorded.actor_email) == (DEFAULT_PURPOSE, cast.registrar.email)

    viewed = client.get(url, query_string={"purpose": "Correction or review", "mode": "view"})
    assert viewed.headers["Content-Disposition"].startswith("inline;")
    assert events(runtime, Action.DOCUMENT_PREVIEW)[0].event.purpose == "Correction or review"


def test_a_disabled_guardian_account_is_marked_where_registrars_link_and_share(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.registrar.email)
    guardians = f"/registrar/students/{cast.child.id}/guardians"
    sharing = f"/registrar/students/{cast.child.id}/sharing"
    assert "Account disabled" not in client.get(guardians).get_data(as_text=True)
    runtime.accounts.disable(cast.admin, cast.parent.email)
    assert "Account disabled</strong>: cannot log in" in client.get(guardians).get_data(
        as_text=True
    )
    assert f"({cast.parent.email}): account disabled, cannot log in</option>" in client.get(
        sharing
    ).get_data(as_text=True)


def test_link_and_restrict_guardians(app: Flask, runtime: Runtime, cast: Cast) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/guardians"
    unknown = post(client, url, {"email": "nobody@home.example", "relationship": "parent"})
    assert unknown.status_code == 400 and 'id="email-error"' in unknown.get_data(as_text=True)
    empty = post(client, url, {"email": " ", "relationship": ""}).get_data(as_text=True)
    assert "Enter the email address of the guardian." in empty
    assert 'id="relationship-error"' in empty

    linked = post(client, url, {"email": cast.other_parent.email, "relationship": "guardian"})
    assert linked.status_code == 302
    page = client.get(url).get_data(as_text=True)
    assert cast.other_parent.email in page and "Restricted" not in page
    share_folder(runtime, cast, cast.child, cast.other_parent.email)

    no_reason = post(client, f"{url}/{cast.other_parent.user_id}/restrict", {"reason": " "})
    assert no_reason.status_code == 400
    restricted = post(
        client, f"{url}/{cast.other_parent.user_id}/restrict", {"reason": "Court order 2025-114"}
    )
    assert restricted.status_code == 302
    page = client.get(url).get_data(as_text=True)
    assert "Restricted</strong> Court order 2025-114" in page
    # Nothing can be shared with a restricted guardian, and the form does not offer them.
    sharing = client.get(f"/registrar/students/{cast.child.id}/sharing").get_data(as_text=True)
    assert f'value="{cast.other_parent.email}"' not in sharing
    refused = post(
        client,
        f"/registrar/students/{cast.child.id}/grants",
        {"guardian": cast.other_parent.email, "scope": "folder"},
    )
    assert refused.status_code == 400 and "restricted" in refused.get_data(as_text=True)
    # The grant made before the restriction is listed as giving nothing.
    assert f"{cast.other_parent.email}</strong> was given the whole folder" in sharing
    assert "but sees nothing while restricted" in sharing
    # Linking them again does not lift the restriction, and the message says so.
    again = post(client, url, {"email": cast.other_parent.email, "relationship": "guardian"})
    assert again.status_code == 302
    assert "stays restricted" in client.get(url).get_data(as_text=True)


def test_end_a_guardians_link_after_confirming(app: Flask, runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    parent = signed_in(app, cast.parent.email)
    assert parent.get(f"/guardian/documents/{document.id}/view").status_code == 200
    client = signed_in(app, cast.registrar.email)
    guardians = f"/registrar/students/{cast.child.id}/guardians"
    assert cast.parent.user_id is not None
    name = runtime.accounts.get(cast.parent.user_id).display_name
    button = f'End link<span class="visually-hidden"> of {name}'
    assert button in client.get(guardians).text
    url = f"{guardians}/{cast.parent.user_id}/unlink"

    # The button asks first, naming the grants that go with the link; nothing changes yet.
    asked = post(client, url)
    assert asked.status_code == 200
    assert f"End {cast.parent.email}'s link to {cast.child.full_name}?" in html.unescape(asked.text)
    assert "<li>the whole folder, shared by registrar@" in asked.text
    assert 'name="confirm" value="yes"' in asked.text
    assert events(runtime, Action.GUARDIAN_UNLINK) == []

    done = post(client, url, {"confirm": "yes"})
    assert (done.status_code, done.headers["Location"]) == (302, guardians)
    page = client.get(guardians).text
    assert f"{cast.parent.email} is no longer linked to {cast.child.full_name}" in page
    assert "Link ended" in page and button not in page
    [unlinked] = events(runtime, Action.GUARDIAN_UNLINK)
    assert (unlinked.event.detail, unlinked.event.actor_email) == (
        cast.parent.email,
        cast.registrar.email,
    )
    assert [
        g.status
        for g in runtime.grants.list_for_student(
            cast.registrar, cast.child.id, include_inactive=True
        )
    ] == [GrantStatus.REVOKED]
    assert parent.get(f"/guardian/documents/{document.id}/view").status_code == 404

    again = post(client, url, {"confirm": "yes"})
    assert again.status_code == 302 and len(events(runtime, Action.GUARDIAN_UNLINK)) == 1
    assert "has ended already; nothing was changed" in client.get(guardians).text
    # Only this student's guardians: another family's guardian, or nobody, is not found.
    other = post(client, f"{guardians}/{cast.other_parent.user_id}/unlink", {"confirm": "yes"})
    assert other.status_code == 404
    assert post(client, f"{guardians}/{uuid.uuid4()}/unlink").status_code == 404


def test_grant_document_category_and_folder_then_revoke_with_reason(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/grants"
    last_day = (clock() + timedelta(days=30)).date()
    for form in (
        {"scope": "document", "document": str(document.id)},
        {"scope": "category", "category": "health"},
        {"scope": "folder", "expires": last_day.isoformat(), "reason": "Enrolment"},
    ):
        response = post(client, url, {"guardian": cast.parent.email, **form})
        assert response.status_code == 302, response.get_data(as_text=True)
    grants = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert {g.scope for g in grants} == set(GrantScope)
    folder_grant = next(g for g in grants if g.scope is GrantScope.FOLDER)
    assert folder_grant.expires_at is not None
    assert folder_grant.expires_at.date() == last_day

    page = client.get(f"/registrar/students/{cast.child.id}/sharing").get_data(as_text=True)
    assert page.count('class="grant"') == 3

    revoke = f"{url}/{folder_grant.id}/revoke"
    assert post(client, revoke, {"reason": ""}).status_code == 400
    assert post(client, revoke, {"reason": "Moved away"}).status_code == 302
    [revoked] = [
        g
        for g in runtime.grants.list_for_student(
            cast.registrar, cast.child.id, include_inactive=True
        )
        if g.id == folder_grant.id
    ]
    assert (revoked.status, revoked.revoke_reason) == (GrantStatus.REVOKED, "Moved away")
    # Gone from what is shared, listed among what has ended, with who and why.
    page = client.get(f"/registrar/students/{cast.child.id}/sharing").get_data(as_text=True)
    assert page.count('class="grant"') == 2
    assert "Access that has ended (1)" in page and page.count('class="ended-grant"') == 1
    assert f"by {cast.registrar.email}: Moved away." in page
    # A second click finds nothing to revoke: back to the page, which says so.
    twice = post(client, revoke, {"reason": "again"})
    assert twice.status_code == 302
    assert "has ended already (revoked); nothing was changed" in client.get(
        f"/registrar/students/{cast.child.id}/sharing"
    ).get_data(as_text=True)


def test_the_grant_list_shows_what_the_policy_gives_not_what_was_granted(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    expiring = runtime.grants.grant(
        cast.registrar,
        cast.other_parent.email,
        cast.child.id,
        GrantScope.FOLDER,
        expires_at=clock() + timedelta(days=1),
    )
    health = runtime.grants.grant(
        cast.registrar,
        cast.other_parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.HEALTH,
    )
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.other_parent.email, "Court order 2026-7"
    )
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/sharing"

    page = client.get(url).get_data(as_text=True)
    assert page.count('data-status="active"') == 1
    assert page.count('data-status="guardian restricted"') == 2
    assert f"<strong>{cast.parent.email}</strong> sees the whole folder" in page
    assert f"<strong>{cast.other_parent.email}</strong> sees" not in page
    statuses = {
        g.id: g.status for g in runtime.grants.list_for_student(cast.registrar, cast.child.id)
    }
    assert statuses[expiring.id] is statuses[health.id] is GrantStatus.GUARDIAN_RESTRICTED

    # A restricted guardian's grant is still there to revoke.
    revoke = f"/registrar/students/{cast.child.id}/grants/{health.id}/revoke"
    assert post(client, revoke, {"reason": "Court order 2026-7"}).status_code == 302
    clock.advance(timedelta(days=2))
    every = runtime.grants.list_for_student(cast.registrar, cast.child.id, include_inactive=True)
    # Their own end is named first, whatever the guardian's link says.
    assert {g.id: g.status for g in every if g.guardian_email == cast.other_parent.email} == {
        expiring.id: GrantStatus.EXPIRED,
        health.id: GrantStatus.REVOKED,
    }
    page = client.get(url).get_data(as_text=True)
    assert page.count('class="grant"') == 1 and 'data-status="active"' in page


def test_the_document_to_share_is_chosen_from_the_folder_grouped_by_category(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    hearing, _ = upload_pdf(runtime, cast, cast.child, "Hearing screening", Category.HEALTH)
    term, _ = upload_pdf(runtime, cast, cast.child, "Term 1", Category.REPORT_CARD)
    upload_pdf(runtime, cast, cast.other_child, "Another student's record", Category.HEALTH)
    client = signed_in(app, cast.registrar.email)
    page = client.get(f"/registrar/students/{cast.child.id}/sharing").get_data(as_text=True)
    start = page.index('<select id="document"')
    document_select = page[start : page.index("</select>", start)]
    groups = re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', document_select, re.S)
    assert [
        (label, re.findall(r'<option value="([^"]+)">([^<]+)</option>', options))
        for label, options in groups
    ] == [
        ("Report card", [(str(term.id), "Term 1 (2025-2026)")]),
        ("Health record", [(str(hearing.id), "Hearing screening (2025-2026)")]),
    ]


def test_grant_form_rejects_bad_input(app: Flask, cast: Cast, clock: Clock) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/grants"
    yesterday = (clock() - timedelta(days=1)).date().isoformat()
    cases = [
        ({"scope": "category"}, "category"),
        ({"scope": "document", "document": "not-an-id"}, "document"),
        ({"scope": "document", "document": str(uuid.uuid4())}, "document"),
        ({"scope": "folder", "expires": "next week"}, "expires"),
        ({"scope": "folder", "expires": yesterday}, "expires"),
        ({"scope": "folder", "reason": "x" * 501}, "reason"),
    ]
    for form, field in cases:
        response = post(client, url, {"guardian": cast.parent.email, **form})
        assert response.status_code == 400, form
        assert f'id="{field}-error"' in response.get_data(as_text=True), form


def test_a_grant_to_someone_not_a_guardian_is_refused_on_the_guardian_field(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    client = signed_in(app, cast.registrar.email)
    refused = post(
        client,
        f"/registrar/students/{cast.child.id}/grants",
        {"guardian": cast.other_parent.email, "scope": "document", "document": str(document.id)},
    )
    html = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert 'id="guardian-error"' in html and 'id="document-error"' not in html


def test_sharing_twice_is_refused_and_a_revoke_says_what_still_shares(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{cast.child.id}/grants"
    sharing = f"/registrar/students/{cast.child.id}/sharing"
    for form in ({"scope": "folder"}, {"scope": "category", "category": "health"}):
        assert post(client, url, {"guardian": cast.parent.email, **form}).status_code == 302

    twice = post(client, url, {"guardian": cast.parent.email, "scope": "folder"})
    html = twice.get_data(as_text=True)
    assert twice.status_code == 409 and 'id="guardian-error"' in html
    assert "has the whole folder shared with them already; nothing was changed" in html
    assert len(runtime.grants.list_for_student(cast.registrar, cast.child.id)) == 2

    [health] = [
        g
        for g in runtime.grants.list_for_student(cast.registrar, cast.child.id)
        if g.scope is GrantScope.CATEGORY
    ]
    assert post(client, f"{url}/{health.id}/revoke", {"reason": "Asked"}).status_code == 302
    page = client.get(sharing).get_data(as_text=True)
    assert (
        f"but {cast.parent.email} still sees it through another grant in force: "
        "the whole folder. Revoke that one too" in page
    )
    assert "no longer sees" not in page


def test_a_grant_is_revoked_only_through_its_own_student(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    share_folder(runtime, cast, cast.other_child, cast.other_parent.email)
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.other_child.id)
    client = signed_in(app, cast.registrar.email)
    wrong = f"/registrar/students/{cast.child.id}/grants/{grant.id}/revoke"
    refused = post(client, wrong, {"reason": "typo"})
    assert refused.status_code == 404
    assert "ends the sharing" not in refused.text  # that hint is for guardians
    assert runtime.grants.list_for_student(cast.registrar, cast.other_child.id)[0].id == grant.id


def test_titles_and_names_are_escaped(app: Flask, runtime: Runtime, cast: Cast) -> None:
    upload_pdf(runtime, cast, cast.child, title='<script>alert("x")</script>')
    client = signed_in(app, cast.registrar.email)
    html = client.get(f"/registrar/students/{cast.child.id}").get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;" in html


# Uploads never rest in plaintext on disk ------------------------------------------------

MIB = 1024 * 1024


def large_scan(size: int) -> bytes:
    """A one-page greyscale TIFF of about ``size`` bytes with random pixels, so that no
    64-byte stretch of it is found anywhere else by chance."""
    side = math.isqrt(size)
    data = bytearray(samples.make_tiff(pages=1, width=side, height=side))
    data[8 : 8 + side * side] = os.urandom(side * side)  # the pixels follow the header
    return bytes(data)


def post_encoded(client: FlaskClient, url: str, fields: dict[str, Any]) -> TestResponse:
    """POST a multipart form encoded in memory, with the session's CSRF token.

    The test client would otherwise encode a large body into a plaintext temporary file
    of its own, in the very directory these tests watch.
    """
    boundary, body = encode_multipart({**fields, "csrf_token": helpers.csrf(client)})
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def test_an_uploaded_file_never_rests_in_plaintext_on_the_servers_disk(
    app: Flask, runtime: Runtime, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Werkzeug's form parser would write every file part over 500 KB in plaintext to the
    system temp dir; the app's requests write them into the vault's encrypted spool."""
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    spool_dir = runtime.settings.data_dir / "tmp"
    data = large_scan(9 * MIB)  # past the 8 MiB held in memory: it spills to disk
    probes = [data[at : at + 64] for at in (8, len(data) // 2, len(data) - 256)]
    seen: dict[str, Any] = {}

    @app.before_request
    def look_at_the_disk() -> None:
        # After the CSRF check, which has parsed the whole form: every byte has arrived.
        if request.endpoint == "registrar.upload" and request.method == "POST":
            seen["stream"] = request.files["files"].stream
            seen["system temp"] = open_files_in(system_temp)
            seen["spool"] = open_files_in(spool_dir)

    client = signed_in(app, cast.registrar.email)
    response = post_encoded(
        client,
        f"/registrar/students/{cast.child.id}/upload",
        {
            "form": "single",
            "title": "Scanned folder",
            "category": "report_card",
            "school_year": "2025-2026",
            "files": FileStorage(io.BytesIO(data), filename="scan.tif"),
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    leaks = [c for c in seen["system temp"] + seen["spool"] if any(p in c for p in probes)]
    assert len(leaks) == 0, "the upload's plaintext is in a file on disk"
    assert seen["system temp"] == []
    assert isinstance(seen["stream"], SpoolFile)
    [spilled] = seen["spool"]  # the upload's spool file, encrypted
    assert len(spilled) == len(data)
    [document] = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert document.current.sha256 == hashlib.sha256(data).hexdigest()
    assert open_files_in(spool_dir) == []  # closed with the request


def test_the_files_of_one_request_share_one_memory_allowance(app: Flask, runtime: Runtime) -> None:
    """However many files a form carries, the request holds about the vault's memory
    spool in memory; the files past it spill (encrypted), and every one reads back."""
    files = [os.urandom(5 * MIB) for _ in range(4)]
    boundary, body = encode_multipart(
        {
            "files": [
                FileStorage(io.BytesIO(f), filename=f"scan-{n}.tif") for n, f in enumerate(files)
            ]
        }
    )
    environ = EnvironBuilder(
        method="POST", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    ).get_environ()
    limit = runtime.vault.memory_spool_bytes
    with app.request_context(environ):
        tracemalloc.start()
        try:
            received = request.files.getlist("files")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        streams = [f.stream for f in received]
        assert all(isinstance(s, SpoolFile) for s in streams)
        held = [s.memory_bytes for s in streams if isinstance(s, SpoolFile)]
        assert held == [5 * MIB, 0, 0, 0]
        assert [registrar.received(f).open().read() for f in received] == files
    # One file in memory (joined once from the parser's pieces) and the parser's buffers;
    # each file held on its own would be 20 MiB.
    assert peak < 2 * limit, f"peak traced memory {peak / MIB:.1f} MiB"
