"""Three journeys through the real UI in Chromium, with screenshots of the pages
(``var/test-screenshots/journey-*.png``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from folders.errors import NotFound
from folders.runtime import Runtime
from tests.support import samples
from tests.support.browser import SCREENSHOTS
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import CAST_PASSWORD, share_folder, upload_pdf

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"journey-{name}.png"), full_page=True)


def _log_in(page: Any, live_server: str, email: str) -> None:
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(CAST_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def test_registrar_uploads_two_files_one_refused_and_shares_the_folder(
    page: Any, live_server: str, runtime: Runtime, cast: Cast
) -> None:
    _log_in(page, live_server, cast.registrar.email)
    page.get_by_label("Name, district id or state id").fill("Lopez")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Lopez, Lucia").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Folder of Lucia Lopez"
    page.get_by_role("navigation", name="This student").get_by_role("link", name="Upload").click()

    several = page.locator("section", has=page.get_by_role("heading", name="Several documents"))
    several.get_by_label("Files").set_input_files(
        [
            {
                "name": "fall_report_card.pdf",
                "mimeType": "application/pdf",
                "buffer": samples.make_pdf(pages=2, text="Fall report card"),
            },
            {
                "name": "not_really.pdf",
                "mimeType": "application/pdf",
                "buffer": samples.html_document(),
            },
        ]
    )
    several.get_by_label("Category").select_option(label="Report card")
    several.get_by_role("button", name="Upload all").click()
    page.wait_for_load_state()
    results = page.locator(".results")
    assert "1 file was stored" in results.inner_text()
    refusal = page.get_by_role("alert")
    assert "not_really.pdf" in refusal.inner_text()
    reason = refusal.locator("li").inner_text().split(":", 1)[1].strip()
    assert len(reason) > 10  # the inspection's own explanation, shown as is
    _shot(page, "1-upload-results")
    assert [d.title for d in runtime.documents.list_folder(cast.registrar, cast.child.id)] == [
        "fall report card"
    ]
    # Reloading the results page makes the browser send the same form, files and all.
    again = page.reload()
    assert again is not None and again.request.method == "POST" and again.status == 409
    assert "These files were sent already" in page.get_by_role("alert").inner_text()
    assert len(runtime.documents.list_folder(cast.registrar, cast.child.id)) == 1

    page.get_by_role("link", name="Sharing").click()
    page.get_by_label("Guardian").select_option(cast.parent.email)
    page.get_by_label("The whole folder, including documents added later").check()
    page.get_by_label("Reason (optional, recorded)").fill("Annual review")
    page.get_by_role("button", name="Share").click()
    page.wait_for_load_state()
    status = page.get_by_role("status").inner_text()
    assert f"Shared the whole folder with {cast.parent.email}" in status
    _shot(page, "1-shared")
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert grant.guardian_email == cast.parent.email


def test_a_second_submit_of_an_upload_form_on_its_way_is_cancelled(
    page: Any, live_server: str, runtime: Runtime, cast: Cast
) -> None:
    _log_in(page, live_server, cast.registrar.email)
    page.goto(f"{live_server}/registrar/students/{cast.child.id}/upload")
    one = page.locator("section", has=page.get_by_role("heading", name="One document"))
    one.get_by_label("File").set_input_files(
        {
            "name": "spring_report_card.pdf",
            "mimeType": "application/pdf",
            "buffer": samples.make_pdf(pages=1, text="Spring report card"),
        }
    )
    one.get_by_label("Category").select_option(label="Report card")
    form = one.locator("form")
    # A double click: the button's submit, then a second one while the first is sent.
    with page.expect_navigation():
        second = form.evaluate(
            """form => {
                form.querySelector("button[type=submit]").click();
                const again = new SubmitEvent("submit", {bubbles: true, cancelable: true});
                form.dispatchEvent(again);
                return {
                    cancelled: again.defaultPrevented,
                    busy: form.getAttribute("aria-busy"),
                    label: form.querySelector("button[type=submit]").textContent,
                };
            }"""
        )
    assert second == {"cancelled": True, "busy": "true", "label": "Uploading…"}
    assert "1 file was stored" in page.locator(".results").inner_text()
    assert [d.title for d in runtime.documents.list_folder(cast.registrar, cast.child.id)] == [
        "spring report card"
    ]


def test_guardian_downloads_then_loses_access_when_the_registrar_revokes(
    page: Any, browser: Any, live_server: str, runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    document, data = upload_pdf(runtime, cast, cast.child, "Spring report card")
    share_folder(runtime, cast, cast.child, cast.parent.email)

    _log_in(page, live_server, cast.parent.email)
    assert page.url == f"{live_server}/guardian/"
    card = page.locator(".card", has_text="Spring report card")
    assert "New" in card.inner_text()
    _shot(page, "2-guardian-shared")

    view_url = card.get_by_role("link", name="View").get_attribute("href")
    viewed = page.request.get(f"{live_server}{view_url}")
    assert viewed.status == 200 and viewed.body() == data
    assert viewed.headers["content-disposition"].startswith("inline;")
    shown = page.goto(f"{live_server}{view_url}")  # Chromium's own PDF viewer, under our CSP
    assert shown.status == 200 and shown.headers["content-type"] == "application/pdf"
    page.wait_for_load_state("networkidle")
    _shot(page, "2-guardian-view-pdf")
    page.go_back()
    card = page.locator(".card", has_text="Spring report card")
    with page.expect_download() as download_info:
        card.get_by_role("link", name="Download").click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == data and download.suggested_filename == "record.pdf"

    phone = browser.new_context(viewport=PHONE)
    try:
        small = phone.new_page()
        _log_in(small, live_server, cast.parent.email)
        small.get_by_role("link", name="who has seen Lucia's records").click()
        assert "Access history" in small.get_by_role("heading", level=1).inner_text()
        _shot(small, "2-guardian-history-phone")
    finally:
        phone.close()

    registrar = browser.new_context()
    try:
        staff = registrar.new_page()
        _log_in(staff, live_server, cast.registrar.email)
        staff.goto(f"{live_server}/registrar/students/{cast.child.id}/sharing")
        staff.get_by_label(f"Reason for revoking the whole folder from {cast.parent.email}").fill(
            "Records request closed"
        )
        staff.get_by_role("button", name="Revoke").click()
        staff.wait_for_load_state()
        assert "no longer sees the whole folder" in staff.get_by_role("status").inner_text()
        _shot(staff, "2-registrar-revoked")
    finally:
        registrar.close()

    response = page.goto(f"{live_server}/guardian/documents/{document.id}/download")
    assert response.status == 404
    _shot(page, "2-guardian-404")
    page.goto(f"{live_server}/guardian/")
    assert page.locator(".card").count() == 0


def test_compliance_finds_the_events_verifies_the_log_and_exports_csv(
    page: Any, live_server: str, runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    runtime.documents.open(cast.parent, document.id)
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    runtime.grants.revoke(cast.registrar, grant.id, "Records request closed")
    with pytest.raises(NotFound):
        runtime.documents.open(cast.parent, document.id)

    _log_in(page, live_server, cast.compliance.email)
    page.get_by_label("Student (district id or Satchel id)").fill(cast.child.district_id)
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    table = page.get_by_role("region", name="Audit events").inner_text()
    for action in (
        "document.upload",
        "grant.create",
        "document.download",
        "grant.revoke",
        "access.denied",
    ):
        assert action in table, action
    _shot(page, "3-compliance-search")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export these events as CSV").click()
    saved = tmp_path / "audit.csv"
    download_info.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert {"document.download", "grant.revoke", "access.denied", "audit.export"} <= {
        r["action"] for r in rows
    }

    page.get_by_role("link", name="Verify the log").click()
    page.get_by_role("button", name="Verify now").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="The log verifies").is_visible()
    _shot(page, "3-compliance-verified")

    page.get_by_role("link", name="Records of disclosures").click()
    page.get_by_label("Student's district id").fill(cast.child.district_id)
    page.get_by_role("button", name="Show the record").click()
    page.wait_for_load_state()
    assert "Downloaded a document" in page.get_by_role("region", name="Disclosures").inner_text()
    page.emulate_media(media="print")
    _shot(page, "3-record-of-disclosures-print")
