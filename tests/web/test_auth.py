from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient

from audit.errors import AuditUnavailable
from audit.events import Action, Event, Outcome
from folders.models import Role
from folders.runtime import Runtime
from tests.support.app import AuthActions, csrf_from
from web.app import create_app

ROLE_HOMES = ["/registrar/", "/guardian/", "/compliance/", "/admin/"]


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_login_page_renders_an_accessible_form(client: FlaskClient) -> None:
    response = client.get("/login")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<html lang="en">' in html
    assert '<label for="email">' in html and '<label for="password">' in html
    assert 'name="csrf_token"' in html


def test_security_headers_on_every_response(client: FlaskClient) -> None:
    for path in ["/login", "/healthz", "/no-such-page"]:
        response = client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"


def test_post_without_csrf_token_is_400(client: FlaskClient, auth: AuthActions) -> None:
    auth.create("r@school.example", Role.REGISTRAR)
    client.get("/login")
    response = client.post(
        "/login", data={"email": "r@school.example", "password": "correct horse battery staple"}
    )
    assert response.status_code == 400
    assert client.get("/registrar/").status_code == 302  # still not logged in


@pytest.mark.parametrize(
    ("role", "home"),
    [
        (Role.REGISTRAR, "/registrar/"),
        (Role.GUARDIAN, "/guardian/"),
        (Role.COMPLIANCE, "/compliance/"),
        (Role.ADMIN, "/admin/"),
    ],
)
def test_login_lands_on_the_role_home(
    client: FlaskClient, auth: AuthActions, role: Role, home: str
) -> None:
    auth.create("user@school.example", role)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={
            "email": "user@school.example",
            "password": "correct horse battery staple",
            "csrf_token": token,
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == home
    assert client.get(home).status_code == 200
    for other in ROLE_HOMES:
        if other != home:
            refused = client.get(other)
            assert refused.status_code == 403
            assert "accounts; you are signed in as" in refused.get_data(as_text=True)


def test_another_roles_page_is_refused_and_the_refusal_recorded(
    client: FlaskClient, auth: AuthActions, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth.create("g@home.example", Role.GUARDIAN)
    assert auth.login("g@home.example") == 302
    refused = client.get("/registrar/?q=Ada", headers={"X-Request-ID": "proxy-req-0042"})
    assert refused.status_code == 403
    [recorded] = runtime.audit_log.query(action=Action.ACCESS_DENIED).items
    event = recorded.event
    assert (event.actor_email, event.actor_role) == ("g@home.example", "guardian")
    assert event.outcome is Outcome.DENIED
    assert event.detail == "GET /registrar/: registrar pages"  # no query string
    assert event.request_id == "proxy-req-0042"

    # Fail closed: a refusal that cannot be recorded is answered 503, not 403.
    def unavailable(event: Event) -> None:
        raise AuditUnavailable("the audit insert failed")

    monkeypatch.setattr(runtime.audit_log, "record", unavailable)
    assert client.get("/compliance/").status_code == 503
    assert client.get("/guardian/").status_code == 200  # their own pages still work


def test_wrong_password_is_401_and_says_nothing_specific(
    client: FlaskClient, auth: AuthActions
) -> None:
    auth.create("g@home.example", Role.GUARDIAN)
    assert auth.login("g@home.example", "wrong password here") == 401
    assert auth.login("nobody@home.example", "wrong password here") == 401
    assert client.get("/guardian/").status_code == 302


@pytest.mark.parametrize("path", ROLE_HOMES)
def test_anonymous_is_sent_to_login(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_session_cookie_flags(client: FlaskClient, auth: AuthActions) -> None:
    auth.create("g@home.example", Role.GUARDIAN)
    client.get("/login")
    cookie = client.get_cookie("satchel_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_logout_ends_the_session(client: FlaskClient, auth: AuthActions) -> None:
    auth.create("g@home.example", Role.GUARDIAN)
    assert auth.login("g@home.example") == 302
    token = csrf_from(client.get("/guardian/").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/guardian/").status_code == 302


def test_offsite_next_is_ignored(client: FlaskClient, auth: AuthActions) -> None:
    auth.create("g@home.example", Role.GUARDIAN)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={
            "email": "g@home.example",
            "password": "correct horse battery staple",
            "csrf_token": token,
            "next": "//evil.example/phish",
        },
    )
    assert response.headers["Location"] == "/guardian/"


@pytest.mark.parametrize(("hops", "recorded"), [(0, "127.0.0.1"), (1, "203.0.113.9")])
def test_client_address_behind_a_proxy(runtime: Runtime, hops: int, recorded: str) -> None:
    """Only the configured number of proxies is trusted for the client address."""
    proxied = Runtime(
        runtime.settings.replace(proxy_hops=hops),
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024),
    )
    client = create_app(runtime=proxied).test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    client.post(
        "/login",
        data={"email": "x@home.example", "password": "wrong password!", "csrf_token": token},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    event = runtime.audit_log.query(per_page=1).items[0].event
    assert (event.action.value, event.client_address) == ("auth.login_failed", recorded)
    proxied.close()
