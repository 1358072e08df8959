"""The authorization matrix: every route of ``app.url_map``, every method, every role, and
a resource of the user's own family, of another family, and one that does not exist.

The expected status of every cell is written down below as data. Each request is one a
legitimate user would make (a complete form with a valid CSRF token, a purpose where one is
required), so what decides the answer is authorization, not form validation or CSRF. The
test reports every cell that differs and names an unexpected 2xx first: that is a hole.

Roles: ``guardian_own`` is the guardian of family A, ``guardian_other`` the guardian of
family B. Resources: ``own`` are family A's ids (student, document, version, grant, guardian
account, password link), ``other`` the same of family B, ``unrelated`` ids nobody has.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from audit.events import Action
from folders.actor import Actor
from folders.disclosures import DEFAULT_PURPOSE
from folders.models import Role
from folders.runtime import Runtime
from tests.support import samples
from tests.support.people import Cast
from tests.web.helpers import CAST_PASSWORD, csrf, share_folder, signed_in, upload_pdf

ROLES = ("anonymous", "registrar", "guardian_own", "guardian_other", "compliance", "admin")
RESOURCES = ("own", "other", "unrelated")

# A cell is one status for every resource, or one per resource (own, other, unrelated).
Cell = int | tuple[int, int, int]

ANY = (200, 200, 404)  # any family's record is there; an unknown id is not found
CHG = (302, 302, 404)  # the change is made and the browser sent on; unknown id: not found
OWN = (200, 404, 404)  # a guardian: only their own family's record
OTHER = (404, 200, 404)  # the other family's guardian: only that family's record


@dataclass(frozen=True)
class Row:
    anonymous: Cell
    registrar: Cell
    guardian_own: Cell
    guardian_other: Cell
    compliance: Cell
    admin: Cell

    def expected(self, role: str, resource: str) -> int:
        cell: Cell = getattr(self, role)
        return cell if isinstance(cell, int) else cell[RESOURCES.index(resource)]


# fmt: off
MATRIX: dict[str, Row] = {
    # Columns: anonymous, registrar, guardian_own, guardian_other, compliance, admin.
    "static GET":                       Row(ANY,      ANY,      ANY,   ANY,   ANY,       ANY),
    "auth.healthz GET":                 Row(200,      200,      200,   200,   200,       200),
    "auth.index GET":                   Row(302,      302,      302,   302,   302,       302),
    "auth.login GET":                   Row(200,      200,      200,   200,   200,       200),
    "auth.login POST":                  Row(401,      401,      401,   401,   401,       401),
    "auth.set_password GET":            Row(ANY,      ANY,      ANY,   ANY,   ANY,       ANY),
    "registrar.home GET":               Row(302,      200,      403,   403,   403,       403),
    "registrar.folder GET":             Row(302,      ANY,      403,   403,   403,       403),
    "registrar.document GET":           Row(302,      ANY,      403,   403,   403,       403),
    "registrar.open_version GET":       Row(302,      ANY,      403,   403,   403,       403),
    "registrar.upload GET":             Row(302,      ANY,      403,   403,   403,       403),
    "registrar.guardians GET":          Row(302,      ANY,      403,   403,   403,       403),
    "registrar.sharing GET":            Row(302,      ANY,      403,   403,   403,       403),
    "guardian.home GET":                Row(302,      403,      200,   200,   403,       403),
    "guardian.view GET":                Row(302,      403,      OWN,   OTHER, 403,       403),
    "guardian.download GET":            Row(302,      403,      OWN,   OTHER, 403,       403),
    "guardian.history GET":             Row(302,      403,      OWN,   OTHER, 403,       403),
    "compliance.home GET":              Row(302,      403,      403,   403,   200,       403),
    "compliance.export_csv GET":        Row(302,      403,      403,   403,   200,       403),
    "compliance.verify GET":            Row(302,      403,      403,   403,   200,       403),
    "compliance.disclosures_find GET":  Row(302,      403,      403,   403,   200,       403),
    "compliance.disclosure_record GET": Row(302,      403,      403,   403,   ANY,       403),
    "admin.home GET":                   Row(302,      403,      403,   403,   403,       200),
    # POSTs run after every GET, in this order: each changes what later ones see.
    "registrar.upload POST":            Row(302,      ANY,      403,   403,   403,       403),
    "registrar.upload_version POST":    Row(302,      CHG,      403,   403,   403,       403),
    "registrar.link_guardian POST":     Row(302,      CHG,      403,   403,   403,       403),
    "registrar.grant POST":             Row(302,      CHG,      403,   403,   403,       403),
    "registrar.revoke POST":            Row(302,      CHG,      403,   403,   403,       403),
    "registrar.restrict_guardian POST": Row(302,      CHG,      403,   403,   403,       403),
    "registrar.unlink_guardian POST":   Row(302,      CHG,      403,   403,   403,       403),
    "compliance.verify POST":           Row(302,      403,      403,   403,   200,       403),
    "admin.create_user POST":           Row(302,      403,      403,   403,   403,       302),
    "admin.password_link POST":         Row(302,      403,      403,   403,   403,       ANY),
    "admin.disable_user POST":          Row(302,      403,      403,   403,   403,       CHG),
    "admin.enable_user POST":           Row(302,      403,      403,   403,   403,       CHG),
    # A link is a capability, whoever holds it; but the admin has just disabled both
    # guardians and enabled them again, and the links made before that stop working.
    "auth.set_password POST":           Row(CHG,      CHG,      CHG,   CHG,   CHG,       404),
    "auth.logout POST":                 Row(302,      302,      302,   302,   302,       302),
}
# fmt: on

# These end the session of whoever sends them; the test signs in again afterwards.
ENDS_SESSION = {"auth.set_password POST", "auth.logout POST"}
# Outside the embedded mode these answer the admin (the only role let through) 403 before
# any id is looked at: password links are never made on an admin's screen there.
EMBEDDED_ONLY = {"admin.password_link POST"}


@dataclass(frozen=True)
class Resource:
    """The ids of one resource column, and what its forms name."""

    ids: dict[str, str]
    guardian_email: str
    document_id: str


@dataclass(frozen=True)
class World:
    resources: dict[str, Resource]
    emails: dict[str, str]
    spare_guardian: str


@pytest.fixture
def world(runtime: Runtime, cast: Cast) -> World:
    """Two families, each with a shared document, and password links for both guardians."""
    mine, _ = upload_pdf(runtime, cast, cast.child)
    theirs, _ = upload_pdf(runtime, cast, cast.other_child, "Their report card")
    share_folder(runtime, cast, cast.child, cast.parent.email)
    share_folder(runtime, cast, cast.other_child, cast.other_parent.email)
    [grant_a] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    [grant_b] = runtime.grants.list_for_student(cast.registrar, cast.other_child.id)
    spare = "spare@home.example"
    runtime.accounts.add_user(Actor.operator(), spare, Role.GUARDIAN, password=CAST_PASSWORD)
    assert cast.parent.user_id is not None and cast.other_parent.user_id is not None
    link_a = runtime.onboarding.issue(cast.admin, cast.parent.user_id)
    link_b = runtime.onboarding.issue(cast.admin, cast.other_parent.user_id)

    def family(student: Any, document: Any, grant: Any, guardian: Actor, token: str) -> Resource:
        return Resource(
            ids={
                "student_id": str(student.id),
                "document_id": str(document.id),
                "version_id": str(document.current.id),
                "grant_id": str(grant.id),
                "guardian_id": str(guardian.user_id),
                "user_id": str(guardian.user_id),
                "token": token,
                "filename": "satchel.css",
            },
            guardian_email=guardian.email,
            document_id=str(document.id),
        )

    unrelated = Resource(
        ids={
            **{
                name: str(uuid.uuid4())
                for name in (
                    "student_id",
                    "document_id",
                    "version_id",
                    "grant_id",
                    "guardian_id",
                    "user_id",
                )
            },
            "token": uuid.uuid4().hex,
            "filename": "no-such-file.css",
        },
        guardian_email=cast.parent.email,
        document_id=str(uuid.uuid4()),
    )
    return World(
        resources={
            "own": family(cast.child, mine, grant_a, cast.parent, link_a.token),
            "other": family(cast.other_child, theirs, grant_b, cast.other_parent, link_b.token),
            "unrelated": unrelated,
        },
        emails={
            "registrar": cast.registrar.email,
            "guardian_own": cast.parent.email,
            "guardian_other": cast.other_parent.email,
            "compliance": cast.compliance.email,
            "admin": cast.admin.email,
        },
        spare_guardian=spare,
    )


def _pdf() -> tuple[io.BytesIO, str]:
    return io.BytesIO(samples.make_pdf(pages=1)), "matrix.pdf"


def _form(endpoint: str, resource_name: str, resource: Resource, world: World) -> dict[str, Any]:
    """The complete form a legitimate user of ``endpoint`` would send."""
    forms: dict[str, Callable[[], dict[str, Any]]] = {
        "auth.login": lambda: {"email": "nobody@home.example", "password": "not the password"},
        "auth.logout": dict,
        "auth.set_password": lambda: {"password": CAST_PASSWORD, "confirm": CAST_PASSWORD},
        "registrar.upload": lambda: {
            "form": "single",
            "title": "Matrix upload",
            "category": "report_card",
            "school_year": "2025-2026",
            "files": _pdf(),
        },
        "registrar.upload_version": lambda: {"file": _pdf()},
        "registrar.link_guardian": lambda: {
            "email": world.spare_guardian,
            "relationship": "guardian",
        },
        "registrar.grant": lambda: {
            "guardian": resource.guardian_email,
            "scope": "document",
            "document": resource.document_id,
        },
        "registrar.revoke": lambda: {"reason": "authorization matrix"},
        "registrar.restrict_guardian": lambda: {"reason": "authorization matrix"},
        "registrar.unlink_guardian": lambda: {"confirm": "yes"},  # past the confirmation page
        "compliance.verify": dict,
        "admin.create_user": lambda: {
            "email": f"made-{resource_name}@school.example",
            "role": "registrar",
        },
        "admin.password_link": dict,
        "admin.disable_user": lambda: {"confirm": "yes"},  # past the confirmation page
        "admin.enable_user": dict,
    }
    return forms[endpoint]()


def _cells(app: Flask) -> list[tuple[Rule, str]]:
    """Every (rule, method) of the app: GETs in URL order, then POSTs in MATRIX order."""
    found = [
        (rule, method)
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    order = list(MATRIX)
    return sorted(found, key=lambda c: (c[1] != "GET", order.index(f"{c[0].endpoint} {c[1]}")))


def _path(rule: Rule, resource: Resource) -> str:
    path = rule.rule
    for name in rule.arguments:
        for pattern in (f"<uuid:{name}>", f"<path:{name}>", f"<{name}>"):
            path = path.replace(pattern, resource.ids[name])
    assert "<" not in path, f"{rule.rule} has an argument the matrix cannot fill"
    if rule.endpoint == "registrar.open_version":
        path += "?" + urlencode({"purpose": DEFAULT_PURPOSE, "mode": "download"})
    return path


def _send(client: FlaskClient, method: str, path: str, form: dict[str, Any]) -> int:
    if method == "GET":
        response = client.get(path)
    else:
        files = any(isinstance(v, tuple) for v in form.values())
        response = client.post(
            path,
            data={**form, "csrf_token": csrf(client)},
            content_type="multipart/form-data" if files else None,
        )
    response.close()  # documents and exports are streamed
    return response.status_code


def test_the_matrix_names_every_route_and_method(app: Flask) -> None:
    present = {f"{rule.endpoint} {method}" for rule, method in _cells(app)}
    assert present == set(MATRIX), (
        f"routes without expectations: {sorted(present - set(MATRIX))}; "
        f"expectations without a route: {sorted(set(MATRIX) - present)}"
    )
    assert [f.name for f in fields(Row)] == list(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_every_role_as_the_matrix_says(
    app: Flask, runtime: Runtime, world: World, role: str
) -> None:
    def sign_in() -> FlaskClient:
        if role == "anonymous":
            return app.test_client()
        return signed_in(app, world.emails[role])

    def denials() -> int:
        if role == "anonymous":
            return 0
        email = world.emails[role]
        return runtime.audit_log.query(actor_email=email, action=Action.ACCESS_DENIED).total

    client = sign_in()
    holes: list[str] = []
    differences: list[str] = []
    unaudited: list[str] = []
    checked = 0
    for rule, method in _cells(app):
        row = MATRIX[f"{rule.endpoint} {method}"]
        for name in RESOURCES:
            resource = world.resources[name]
            path = _path(rule, resource)
            form = _form(rule.endpoint, name, resource, world) if method == "POST" else {}
            before = denials()
            status = _send(client, method, path, form)
            if status == 403 and denials() != before + 1:
                unaudited.append(f"{method} {path} as {role} on {name}")
            expected = row.expected(role, name)
            cell = f"{rule.endpoint} {method}"
            if cell in EMBEDDED_ONLY and role == "admin" and not runtime.settings.embedded:
                expected = 403
            checked += 1
            if status != expected:
                line = f"{method} {path} as {role} on {name}: {status}, expected {expected}"
                (holes if 200 <= status < 300 else differences).append(line)
            if cell in ENDS_SESSION:
                client = sign_in()
    assert not holes, "unexpected 2xx:\n" + "\n".join(holes + differences)
    assert not differences, "\n".join(differences)
    # Every refusal of a signed-in user is one access.denied event (DESIGN: every denial).
    assert not unaudited, "403 without one access.denied event:\n" + "\n".join(unaudited)
    assert checked == 3 * len(MATRIX)


# Staff routes that take two ids: each id from a different family must not be combined.
MIXED = {
    "registrar.open_version": ("document_id", "version_id"),
    "registrar.revoke": ("student_id", "grant_id"),
    "registrar.restrict_guardian": ("student_id", "guardian_id"),
    "registrar.unlink_guardian": ("student_id", "guardian_id"),
}


def test_staff_cannot_combine_ids_of_two_families_in_one_url(
    app: Flask, runtime: Runtime, cast: Cast, world: World
) -> None:
    multi = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("registrar.") and len(rule.arguments) > 1
    }
    assert multi == set(MIXED)
    client = signed_in(app, cast.registrar.email)
    own, other = world.resources["own"], world.resources["other"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint not in MIXED:
            continue
        method = "GET" if "GET" in (rule.methods or set()) else "POST"
        for swapped in MIXED[rule.endpoint]:
            mixed = Resource({**own.ids, swapped: other.ids[swapped]}, "", "")
            form = _form(rule.endpoint, "own", own, world) if method == "POST" else {}
            status = _send(client, method, _path(rule, mixed), form)
            assert status == 404, (rule.rule, swapped, status)
    # Nothing was revoked or restricted through the mismatched URLs.
    assert all(
        g.revoked_at is None for g in runtime.grants.list_for_student(cast.registrar, cast.child.id)
    )
    assert not any(
        g.restricted for g in runtime.students.list_guardians(cast.registrar, cast.child.id)
    )
