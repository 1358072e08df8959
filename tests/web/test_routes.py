"""Every route, walked from ``app.url_map``: deny by default, and no id reaches another
family's records."""

from __future__ import annotations

import uuid
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from folders.models import Role
from folders.runtime import Runtime
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import csrf, share_folder, signed_in, upload_pdf

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


PUBLIC_ENDPOINTS = {
    "static",
    "auth.healthz",
    "auth.index",
    "auth.login",
    "auth.logout",
    "auth.set_password",
}
ROLE_OF_BLUEPRINT = {
    "registrar": Role.REGISTRAR,
    "guardian": Role.GUARDIAN,
    "compliance": Role.COMPLIANCE,
    "admin": Role.ADMIN,
}


def _rules(app: Flask) -> list[Rule]:
    return sorted(app.url_map.iter_rules(), key=lambda r: r.rule)


def _fill(rule: Rule, values: dict[str, str]) -> str:
    path = rule.rule
    for name in rule.arguments:
        path = path.replace(f"<uuid:{name}>", values[name]).replace(f"<{name}>", values[name])
    assert "<" not in path, f"{rule.rule} has an argument the test cannot fill"
    return path


def _request(client: FlaskClient, rule: Rule, path: str) -> int:
    if "GET" in (rule.methods or set()):
        return client.get(path).status_code
    return client.post(path, data={"csrf_token": csrf(client)}).status_code


def test_every_route_is_public_or_belongs_to_a_role(app: Flask) -> None:
    for rule in _rules(app):
        blueprint = rule.endpoint.split(".")[0] if "." in rule.endpoint else None
        assert rule.endpoint in PUBLIC_ENDPOINTS or blueprint in ROLE_OF_BLUEPRINT, rule.rule


def test_anonymous_is_sent_to_login_everywhere(app: Flask) -> None:
    client = app.test_client()
    any_id = {
        name: str(uuid.uuid4())
        for name in (
            "student_id",
            "document_id",
            "version_id",
            "grant_id",
            "guardian_id",
            "user_id",
        )
    }
    checked = 0
    for rule in _rules(app):
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        path = _fill(rule, any_id)
        response = (
            client.get(path)
            if "GET" in (rule.methods or set())
            else client.post(path, data={"csrf_token": csrf(client)})
        )
        assert response.status_code == 302, rule.rule
        assert response.headers["Location"].startswith("/login?next="), rule.rule
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize("role", list(Role))
def test_every_other_role_is_refused_everywhere(
    app: Flask, runtime: Runtime, cast: Cast, role: Role
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    # Real ids, so a refusal is the role guard's doing and not a missing record.
    real = {
        "student_id": str(cast.child.id),
        "document_id": str(document.id),
        "version_id": str(document.current.id),
        "grant_id": str(grant.id),
        "guardian_id": str(cast.parent.user_id),
        "user_id": str(cast.parent.user_id),
    }
    email = {
        Role.REGISTRAR: cast.registrar,
        Role.GUARDIAN: cast.parent,
        Role.COMPLIANCE: cast.compliance,
        Role.ADMIN: cast.admin,
    }[role].email
    client = signed_in(app, email)
    checked = 0
    for rule in _rules(app):
        owner = ROLE_OF_BLUEPRINT.get(rule.endpoint.split(".")[0])
        if owner is None or owner is role:
            continue
        assert _request(client, rule, _fill(rule, real)) in (403, 404), rule.rule
        checked += 1
    assert checked >= 5
    assert client.get("/").headers["Location"] == f"/{role.value}/"  # still signed in


def test_a_guardian_gets_404_for_another_familys_ids_in_every_url(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    mine, _ = upload_pdf(runtime, cast, cast.child)
    theirs, _ = upload_pdf(runtime, cast, cast.other_child, "Their report card")
    share_folder(runtime, cast, cast.child, cast.parent.email)
    share_folder(runtime, cast, cast.other_child, cast.other_parent.email)
    own_ids = {"student_id": str(cast.child.id), "document_id": str(mine.id)}
    other_ids = {"student_id": str(cast.other_child.id), "document_id": str(theirs.id)}
    client = signed_in(app, cast.parent.email)

    rules = [r for r in _rules(app) if r.endpoint.startswith("guardian.") and r.arguments]
    assert len(rules) >= 3
    for rule in rules:
        missing = rule.arguments - other_ids.keys()
        assert not missing, f"{rule.rule}: teach this test how to swap {missing}"
        # The same URL with the family's own ids works, so the 404 is about ownership.
        assert _request(client, rule, _fill(rule, own_ids)) == 200, rule.rule
        assert _request(client, rule, _fill(rule, other_ids)) == 404, rule.rule
        for name in rule.arguments:  # and each id swapped alone
            mixed = {**own_ids, name: other_ids[name]}
            assert _request(client, rule, _fill(rule, mixed)) == 404, (rule.rule, name)
        made_up = {name: str(uuid.uuid4()) for name in rule.arguments}
        assert _request(client, rule, _fill(rule, made_up)) == 404, rule.rule


def test_every_post_route_needs_the_csrf_token(app: Flask, cast: Cast) -> None:
    clients = {
        role: signed_in(app, email)
        for role, email in (
            ("registrar", cast.registrar.email),
            ("guardian", cast.parent.email),
            ("compliance", cast.compliance.email),
            ("admin", cast.admin.email),
        )
    }
    any_id = {
        name: str(uuid.uuid4())
        for name in (
            "student_id",
            "document_id",
            "version_id",
            "grant_id",
            "guardian_id",
            "user_id",
        )
    }
    posts = [r for r in _rules(app) if "POST" in (r.methods or set())]
    assert len(posts) >= 10
    for rule in posts:
        blueprint = rule.endpoint.split(".")[0]
        client = clients.get(blueprint, clients["registrar"])
        path = _fill(rule, {**any_id, "token": "some-token"})
        assert client.post(path, data={"reason": "x"}).status_code == 400, rule.rule


class _PageAudit(HTMLParser):
    """Collects what the accessibility checks need from one page."""

    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.h1 = 0
        self.labels: set[str] = set()
        self.fields: list[tuple[str, dict[str, str | None]]] = []
        self.headers_without_scope = 0
        self.inline: list[str] = []
        self._in_thead = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        if tag == "h1":
            self.h1 += 1
        if tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.fields.append((tag, a))
        if tag == "thead":
            self._in_thead = True
        if tag == "th" and self._in_thead and a.get("scope") != "col":
            self.headers_without_scope += 1
        inline_script = tag == "script" and not str(a.get("src") or "").startswith("/static/")
        if inline_script or "style" in a or any(k.startswith("on") for k in a):
            self.inline.append(tag)  # the CSP would block it anyway

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_thead = False


def test_every_page_has_lang_one_h1_labelled_fields_and_scoped_headers(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    share_folder(runtime, cast, cast.child, cast.parent.email)
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    real = {
        "student_id": str(cast.child.id),
        "document_id": str(document.id),
        "version_id": str(document.current.id),
        "grant_id": str(grant.id),
        "guardian_id": str(cast.parent.user_id),
        "user_id": str(cast.parent.user_id),
    }
    emails = {
        "registrar": cast.registrar.email,
        "guardian": cast.parent.email,
        "compliance": cast.compliance.email,
        "admin": cast.admin.email,
    }
    checked = 0
    for role, email in emails.items():
        client = signed_in(app, email)
        for rule in _rules(app):
            if not rule.endpoint.startswith(f"{role}.") or "GET" not in (rule.methods or set()):
                continue
            response = client.get(_fill(rule, real))
            if response.mimetype != "text/html":
                response.close()
                continue  # documents and exports
            assert response.status_code in (200, 400), rule.rule
            page = _PageAudit()
            page.feed(response.get_data(as_text=True))
            assert page.lang == "en" and page.h1 == 1, rule.rule
            for tag, attrs in page.fields:
                labelled = attrs.get("id") in page.labels or attrs.get("aria-label")
                assert labelled, (rule.rule, tag, attrs)
            assert page.headers_without_scope == 0, rule.rule
            assert page.inline == [], rule.rule
            checked += 1
    assert checked >= 12


# Values of ``page=`` that are not a plain positive decimal (or absurdly long): each is
# page 1. "²" and "\u0661" (Arabic-Indic one) pass str.isdigit(); int() refuses the first.
NOT_A_PAGE = ("²", "\u0661", "-1", "0", "99999999999999999999", "9" * 5000, "", "+2", " 2", "2.0")


def test_a_page_that_is_not_a_plain_positive_decimal_is_the_first(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    for n in range(60):
        runtime.students.add_student(cast.registrar, f"P-{n:02d}", "Paged", f"Student{n:02d}")
    registrar = signed_in(app, cast.registrar.email)
    compliance = signed_in(app, cast.compliance.email)
    # The reported request, byte for byte: a superscript two.
    assert registrar.get("/registrar/?page=%C2%B2").status_code == 200
    lists = (
        (registrar, "/registrar/", {}),  # 62 students, 25 a page
        (compliance, "/compliance/", {"action": "student.create"}),  # 62 events, 50 a page
    )
    for client, url, args in lists:
        second = client.get(url, query_string={**args, "page": "2"})
        assert second.status_code == 200 and "Page 2 of " in second.text, url
        for raw in NOT_A_PAGE:
            response = client.get(url, query_string={**args, "page": raw})
            assert response.status_code == 200, (url, raw)
            assert "Page 1 of " in response.text, (url, raw)
