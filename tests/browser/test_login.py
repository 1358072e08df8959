from __future__ import annotations

from typing import Any

import pytest

from folders.models import Role
from tests.support.app import PASSWORD, AuthActions
from tests.support.browser import SCREENSHOTS

pytestmark = pytest.mark.browser


def test_login_page_renders_and_its_form_submits(
    page: Any, live_server: str, auth: AuthActions
) -> None:
    auth.create("registrar@school.example", Role.REGISTRAR)
    page.goto(f"{live_server}/login")
    assert page.title() == "Log in · Satchel"
    assert page.get_by_role("heading", level=1).inner_text() == "Log in to Satchel"

    page.get_by_label("Email").fill("registrar@school.example")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "The email or password is not correct."

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server}/registrar/")
    assert page.get_by_role("heading", level=1).inner_text() == "Registrar"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "login-registrar-home.png"), full_page=True)

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{live_server}/login")
