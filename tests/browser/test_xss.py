"""Stored markup in Chromium: titles, names, reasons and file names carrying ``<script>``
and ``<img onerror>`` payloads are shown on the registrar's, the guardian's and the
compliance officer's pages, and nothing runs.

The browser context bypasses the Content-Security-Policy on purpose: the policy would block
an injected inline script anyway, and this test is about the escaping, so a dialog here can
only mean a payload became markup. A control step proves that the dialog listener works.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from folders.runtime import Runtime
from tests.security import test_injection
from tests.security.test_injection import SHORT, Marked
from tests.support.people import Cast
from tests.web.helpers import CAST_PASSWORD

pytestmark = pytest.mark.browser

marked = test_injection.marked

# Anything a payload could have become, had it been rendered as markup (Satchel's own
# script, from /static/, aside).
INJECTED = "script:not([src^='/static/']), img, svg, iframe, [onerror], [onload], [onclick]"


@pytest.fixture
def watched(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page whose dialogs are recorded (and dismissed), with the CSP bypassed."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page, dialogs
    context.close()


def _log_in(page: Any, live_server: str, email: str) -> None:
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(CAST_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def _log_out(page: Any) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state()


def _check(page: Any, url: str, dialogs: list[str], *shown: str) -> None:
    response = page.goto(url)
    assert response.status == 200, url
    page.wait_for_load_state("load")
    assert page.locator(INJECTED).count() == 0, url
    text = page.locator("body").inner_text()
    for value in shown:
        assert value in text, (url, value)
    assert dialogs == [], (url, dialogs)


def test_the_dialog_listener_sees_a_script_that_runs(
    watched: tuple[Any, list[str]], live_server: str
) -> None:
    page, dialogs = watched
    page.goto(f"{live_server}/login")
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', "
        '\'<img src="/no-such-image" onerror="alert(&quot;control&quot;)">\')'
    )
    page.wait_for_function("document.querySelector('img').complete")
    page.wait_for_timeout(200)
    assert dialogs == ["control"]


def test_stored_payloads_run_nowhere(
    watched: tuple[Any, list[str]], live_server: str, runtime: Runtime, cast: Cast, marked: Marked
) -> None:
    page, dialogs = watched
    student = marked.student.id
    names = (f"{marked.given} {marked.family}", SHORT)

    _log_in(page, live_server, cast.registrar.email)
    _check(page, f"{live_server}/registrar/", dialogs, marked.given, marked.school)
    _check(page, f"{live_server}/registrar/students/{student}", dialogs, *names, marked.title)
    _check(page, f"{live_server}/registrar/documents/{marked.document_id}", dialogs, marked.title)
    _check(
        page,
        f"{live_server}/registrar/students/{student}/guardians",
        dialogs,
        marked.guardian_name,
        marked.restriction_reason,
    )
    _check(
        page,
        f"{live_server}/registrar/students/{student}/sharing",
        dialogs,
        marked.grant_reason,
    )
    _log_out(page)

    _log_in(page, live_server, marked.guardian_email)
    _check(
        page,
        f"{live_server}/guardian/",
        dialogs,
        marked.title,
        marked.guardian_name,
        marked.school,
    )
    _check(page, f"{live_server}/guardian/students/{student}/history", dialogs, marked.title)
    _log_out(page)

    _log_in(page, live_server, cast.compliance.email)
    _check(page, f"{live_server}/compliance/", dialogs, marked.title, marked.revoke_reason)
    _check(page, f"{live_server}/compliance/students/{student}/disclosures", dialogs, *names)
    assert dialogs == []
