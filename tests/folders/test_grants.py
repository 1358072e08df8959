from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from folders.categories import Category
from folders.errors import Forbidden, InvalidInput, NotFound
from folders.grants import GrantStatus, parse_scope
from folders.models import GrantScope
from folders.runtime import Runtime
from tests.support.people import Cast, upload_pdf


def test_grant_and_revoke_are_recorded(runtime: Runtime, cast: Cast) -> None:
    grant = runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.IEP,
        reason="IEP meeting",
    )
    assert grant.status is GrantStatus.ACTIVE and grant.scope_label == "category: iep"
    assert [g.id for g in runtime.grants.list_for_student(cast.registrar, cast.child.id)] == [
        grant.id
    ]
    revoked = runtime.grants.revoke(cast.registrar, grant.id, "Meeting over")
    assert revoked.status is GrantStatus.REVOKED
    assert revoked.revoked_by_email == cast.registrar.email
    assert runtime.grants.list_for_student(cast.registrar, cast.child.id) == []
    every = runtime.grants.list_for_student(cast.registrar, cast.child.id, include_inactive=True)
    assert [g.revoke_reason for g in every] == ["Meeting over"]
    events = [e.event for e in runtime.audit_log.query(per_page=2).items]
    assert [e.action.value for e in events] == ["grant.revoke", "grant.create"]
    assert all(e.grant_id == str(grant.id) for e in events)
    with pytest.raises(InvalidInput, match="already revoked"):
        runtime.grants.revoke(cast.registrar, grant.id, "again")


def test_expired_grant_is_listed_as_expired(runtime: Runtime, cast: Cast) -> None:
    soon = runtime.clock() + timedelta(seconds=2)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER, expires_at=soon
    )
    assert grant.status is GrantStatus.ACTIVE
    runtime.clock = lambda: soon + timedelta(seconds=1)  # type: ignore[method-assign]
    runtime.__dict__.pop("grants", None)
    listed = runtime.grants.list_for_student(cast.registrar, cast.child.id, include_inactive=True)
    assert [g.status for g in listed] == [GrantStatus.EXPIRED]


def test_refusals(runtime: Runtime, cast: Cast) -> None:
    grants = runtime.grants
    with pytest.raises(Forbidden):
        grants.grant(cast.parent, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    with pytest.raises(InvalidInput, match="not a guardian"):
        grants.grant(cast.registrar, cast.other_parent.email, cast.child.id, GrantScope.FOLDER)
    with pytest.raises(NotFound):
        grants.grant(cast.registrar, "nobody@home.example", cast.child.id, GrantScope.FOLDER)
    with pytest.raises(NotFound):
        grants.grant(cast.registrar, cast.parent.email, uuid.uuid4(), GrantScope.FOLDER)
    with pytest.raises(InvalidInput, match="future"):
        grants.grant(
            cast.registrar,
            cast.parent.email,
            cast.child.id,
            GrantScope.FOLDER,
            expires_at=runtime.clock() - timedelta(days=1),
        )
    other_doc, _ = upload_pdf(runtime, cast, cast.other_child)
    with pytest.raises(NotFound):
        grants.grant(
            cast.registrar,
            cast.parent.email,
            cast.child.id,
            GrantScope.DOCUMENT,
            document_id=other_doc.id,
        )
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order 2026-114"
    )
    with pytest.raises(InvalidInput, match="restricted"):
        grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert grants.list_for_student(cast.registrar, cast.child.id, include_inactive=True) == []


def test_a_restricted_guardians_grant_is_listed_as_giving_nothing(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order 2026-114"
    )
    # Still listed (in force, and revocable), but not as access: the policy refuses it.
    [listed] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert (listed.id, listed.status, listed.in_force) == (
        grant.id,
        GrantStatus.GUARDIAN_RESTRICTED,
        True,
    )
    with pytest.raises(NotFound):
        runtime.documents.open(cast.parent, document.id)

    revoked = runtime.grants.revoke(cast.registrar, grant.id, "Court order 2026-114")
    assert (revoked.status, revoked.in_force) == (GrantStatus.REVOKED, False)
    assert runtime.grants.list_for_student(cast.registrar, cast.child.id) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("folder", (GrantScope.FOLDER, None, None)),
        ("category:iep", (GrantScope.CATEGORY, Category.IEP, None)),
    ],
)
def test_parse_scope(text: str, expected: tuple[object, ...]) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text", ["", "folder:x", "category:", "category:gossip", "document:not-a-uuid", "everything"]
)
def test_parse_scope_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_scope(text)
