from __future__ import annotations

import re
from datetime import timedelta

from flask import Flask
from sqlalchemy import func, select

from audit.events import Action
from folders.actor import Actor
from folders.models import PasswordToken, Role
from folders.onboarding import Onboarding
from folders.runtime import Runtime
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import Clock, csrf, events, post, signed_in

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


NEW_PASSWORD = "maple leaves in october"


def test_create_accounts_of_the_three_kinds(app: Flask, runtime: Runtime, cast: Cast) -> None:
    client = signed_in(app, cast.admin.email)
    for role in ("registrar", "compliance", "guardian"):
        response = post(
            client,
            "/admin/users",
            {"email": f"New.{role}@School.example", "display_name": f"New {role}", "role": role},
        )
        assert response.status_code == 302
    page = client.get("/admin/").get_data(as_text=True)
    for role in ("registrar", "compliance", "guardian"):
        assert f"new.{role}@school.example" in page
    assert page.count("No password yet") == 3
    created = [e.event.detail for e in events(runtime, Action.USER_CREATE)]
    assert "new.guardian@school.example (guardian)" in created

    taken = post(client, "/admin/users", {"email": cast.parent.email, "role": "guardian"})
    assert taken.status_code == 400 and 'id="email-error"' in taken.get_data(as_text=True)
    admin = post(client, "/admin/users", {"email": "boss@school.example", "role": "admin"})
    assert admin.status_code == 400 and 'id="role-error"' in admin.get_data(as_text=True)


def test_accounts_are_found_by_email_or_name_a_page_at_a_time(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    for n in range(55):
        runtime.onboarding.create_account(
            cast.admin, f"family{n:02d}@home.example", Role.GUARDIAN, f"Family {n:02d}_x"
        )
    client = signed_in(app, cast.admin.email)
    rows = re.compile(r'<th scope="row">(.*?)</th>', re.S)

    first = client.get("/admin/").text
    total = len(runtime.accounts.list_users(cast.admin))
    assert f"{total} accounts." in first and "Page 1 of 2" in first
    assert len(rows.findall(first)) == 50
    second = client.get("/admin/?page=2").text
    assert len(rows.findall(second)) == total - 50 and 'rel="prev"' in second
    past = client.get("/admin/?page=9").text
    assert rows.findall(past) == rows.findall(second)  # a page past the last: the last

    by_email = client.get("/admin/?q=FAMILY07@").text
    assert "1 account matching" in by_email and "family07@home.example" in by_email
    by_name = client.get("/admin/", query_string={"q": "family 07_X"}).text
    assert "1 account matching" in by_name and "family07@home.example" in by_name
    literal = client.get("/admin/", query_string={"q": "_x"}).text
    assert "55 accounts matching" in literal  # "_" is a character here, not a wildcard


def test_disable_an_account(app: Flask, runtime: Runtime, cast: Cast) -> None:
    parent = signed_in(app, cast.parent.email)
    client = signed_in(app, cast.admin.email)
    url = f"/admin/users/{cast.parent.user_id}/disable"
    # The list's button asks first: nothing is disabled until the admin confirms.
    asked = post(client, url, {"q": "home.example", "page": "2"})
    assert asked.status_code == 200
    assert f"<h1>Disable the account {cast.parent.email}?</h1>" in asked.text
    assert "lets it log in again with the password it had" in asked.text
    assert 'name="confirm" value="yes"' in asked.text and 'name="page" value="2"' in asked.text
    assert parent.get("/guardian/").status_code == 200
    assert events(runtime, Action.USER_DISABLE) == []

    done = post(client, url, {"confirm": "yes", "q": "home.example", "page": "2"})
    assert done.status_code == 302
    assert done.headers["Location"].endswith("/admin/?q=home.example&page=2")
    # The disabled guardian's open session ends at once, and they cannot log in again.
    assert parent.get("/guardian/").status_code == 302
    fresh = app.test_client()
    response = fresh.post(
        "/login",
        data={
            "email": cast.parent.email,
            "password": "a long enough passphrase",
            "csrf_token": csrf(fresh),
        },
    )
    assert response.status_code == 401
    assert events(runtime, Action.USER_DISABLE)[0].event.detail == cast.parent.email

    again = post(client, url, {"confirm": "yes"})
    assert again.status_code == 302 and len(events(runtime, Action.USER_DISABLE)) == 1
    asked_again = post(client, url)
    assert asked_again.status_code == 302  # nothing to confirm: the list says so
    assert "disabled already; nothing was changed" in client.get("/admin/").text
    post(client, f"/admin/users/{cast.admin.user_id}/disable", {"confirm": "yes"})
    refusal = re.search(
        r'<div class="error-summary" role="alert">(.*?)</div>', client.get("/admin/").text, re.S
    )
    assert refusal is not None and "cannot disable your own" in refusal.group(1)
    assert client.get("/admin/").status_code == 200


def test_enable_a_disabled_account(app: Flask, runtime: Runtime, cast: Cast) -> None:
    token = runtime.onboarding.issue(cast.admin, cast.parent.user_id).token
    earlier = signed_in(app, cast.parent.email)  # not used again until the account is enabled
    client = signed_in(app, cast.admin.email)
    post(client, f"/admin/users/{cast.parent.user_id}/disable", {"confirm": "yes"})
    listed = client.get("/admin/", query_string={"q": cast.parent.email}).text
    assert f'Enable<span class="visually-hidden"> {cast.parent.email}</span>' in listed

    url = f"/admin/users/{cast.parent.user_id}/enable"
    done = post(client, url, {"q": "home.example", "page": "2"})
    assert done.status_code == 302
    assert done.headers["Location"].endswith("/admin/?q=home.example&page=2")
    assert "is enabled again. It logs in with the password it had" in client.get("/admin/").text
    assert [e.event.detail for e in events(runtime, Action.USER_ENABLE)] == [cast.parent.email]
    # The password it had works again; the session and the link from before do not.
    assert signed_in(app, cast.parent.email).get("/guardian/").status_code == 200
    assert earlier.get("/guardian/").status_code == 302
    assert app.test_client().get(f"/set-password/{token}").status_code == 404

    again = post(client, url)
    assert again.status_code == 302 and len(events(runtime, Action.USER_ENABLE)) == 1
    assert "is active already; nothing was changed" in client.get("/admin/").text
    unknown = post(client, "/admin/users/00000000-0000-4000-8000-000000000000/enable")
    assert unknown.status_code == 404


def test_a_new_password_signs_the_accounts_other_sessions_out(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    earlier = signed_in(app, cast.parent.email)
    assert earlier.get("/guardian/").status_code == 200
    runtime.accounts.set_password(Actor.operator(), cast.parent.email, NEW_PASSWORD)
    assert earlier.get("/guardian/").status_code == 302
    assert signed_in(app, cast.parent.email, NEW_PASSWORD).get("/guardian/").status_code == 200


def _token_rows(runtime: Runtime) -> int:
    with runtime.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(PasswordToken)).scalar_one()


def _issued(runtime: Runtime) -> list[str]:
    return [
        e.event.detail
        for e in events(runtime, Action.USER_UPDATE)
        if e.event.detail.endswith("password-set link issued")
    ]


def test_password_links_are_made_on_screen_in_the_embedded_mode_only(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    # What an operator ran first: `satchel user link parent@home.example`.
    delivered = runtime.onboarding.issue(Actor.operator(), cast.parent.user_id).token
    client = signed_in(app, cast.admin.email)
    button = f'action="/admin/users/{cast.parent.user_id}/password-link"'
    home = client.get("/admin/").text
    response = post(client, f"/admin/users/{cast.parent.user_id}/password-link")
    page = response.get_data(as_text=True)
    if runtime.settings.embedded:
        assert button in home and "satchel user link" not in home
        assert response.status_code == 200
        link = re.search(r'value="(http://[^"]+/set-password/[^"]+)"', page)
        assert link is not None
        path = link.group(1).split("localhost", 1)[1]
        assert client.get(path).status_code == 200
        # As documented on the page: the new link replaces the earlier one.
        assert client.get(f"/set-password/{delivered}").status_code == 404
        assert _token_rows(runtime) == 2
        assert len(_issued(runtime)) == 2
    else:
        # No button; the page names the command that makes links instead.
        assert button not in home and "<code>satchel user link EMAIL</code>" in home
        # A stale page or a hand-made request is refused, and nothing is issued: the
        # link the operator delivered still works, no token row, no audited issue.
        assert response.status_code == 403
        assert "satchel user link EMAIL" in page and "No link was made" in page
        assert "/set-password/" not in page
        assert client.get(f"/set-password/{delivered}").status_code == 200
        assert _token_rows(runtime) == 1
        assert len(_issued(runtime)) == 1
    assert _issued(runtime)[0] == f"{cast.parent.email}: password-set link issued"


def test_the_account_created_notice_names_the_way_to_a_password(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.admin.email)
    made = post(client, "/admin/users", {"email": "new.parent@home.example", "role": "guardian"})
    assert made.status_code == 302
    notice = client.get("/admin/").text
    assert "The guardian account new.parent@home.example is created." in notice
    if runtime.settings.embedded:
        assert "the Password link button" in notice and "satchel user link" not in notice
    else:
        assert "`satchel user link new.parent@home.example`" in notice
        assert "Password link button" not in notice


def test_set_password_with_a_one_time_link(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    onboarding = Onboarding(runtime.engine, runtime.accounts, runtime.audit_log, clock)
    token = onboarding.issue(cast.admin, cast.parent.user_id).token
    client = app.test_client()
    url = f"/set-password/{token}"
    page = client.get(url).get_data(as_text=True)
    assert cast.parent.email in page and '<label for="password">' in page

    mismatch = post(client, url, {"password": NEW_PASSWORD, "confirm": "something else"})
    assert mismatch.status_code == 400 and 'id="confirm-error"' in mismatch.get_data(as_text=True)
    short = post(client, url, {"password": "short", "confirm": "short"})
    html = short.get_data(as_text=True)
    assert short.status_code == 400
    assert re.search(
        r'id="password"[^>]*aria-describedby="password-hint password-error"', html, re.S
    )

    done = post(client, url, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    assert signed_in(app, cast.parent.email, NEW_PASSWORD).get("/guardian/").status_code == 200
    assert client.get(url).status_code == 404  # single use
    assert post(client, url, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}).status_code == 404


def test_links_expire_and_are_replaced(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    onboarding = Onboarding(runtime.engine, runtime.accounts, runtime.audit_log, clock)
    client = app.test_client()
    old = onboarding.issue(cast.admin, cast.parent.user_id).token
    new = onboarding.issue(cast.admin, cast.parent.user_id).token
    assert client.get(f"/set-password/{old}").status_code == 404
    assert client.get(f"/set-password/{new}").status_code == 200
    clock.advance(timedelta(hours=73))
    assert client.get(f"/set-password/{new}").status_code == 404
    assert client.get("/set-password/made-up-token").status_code == 404


def test_only_admins_reach_account_pages(app: Flask, cast: Cast) -> None:
    client = signed_in(app, cast.registrar.email)
    assert client.get("/admin/").status_code == 403
    assert (
        post(client, "/admin/users", {"email": "x@y.example", "role": "registrar"}).status_code
        == 403
    )


def test_disabled_accounts_links_stop_working(
    app: Flask, runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    onboarding = Onboarding(runtime.engine, runtime.accounts, runtime.audit_log, clock)
    token = onboarding.issue(cast.admin, cast.parent.user_id).token
    onboarding.disable_account(cast.admin, cast.parent.user_id)
    assert app.test_client().get(f"/set-password/{token}").status_code == 404
