from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from folders.categories import Category
from folders.errors import Conflict, Forbidden, InvalidInput, NotFound
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
        ("category:HEALTH", (GrantScope.CATEGORY, Category.HEALTH, None)),
        ("category: Report_Card ", (GrantScope.CATEGORY, Category.REPORT_CARD, None)),
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


def test_a_second_grant_of_the_same_scope_in_force_is_refused(runtime: Runtime, cast: Cast) -> None:
    """Two grants of one scope would leave the records shared after one is revoked."""
    document, _ = upload_pdf(runtime, cast, cast.child)
    grants = runtime.grants
    until = runtime.clock() + timedelta(days=30)
    scopes: list[dict[str, object]] = [
        {"scope": GrantScope.FOLDER, "expires_at": until},
        {"scope": GrantScope.CATEGORY, "category": Category.IEP},
        {"scope": GrantScope.DOCUMENT, "document_id": document.id},
    ]
    for kwargs in scopes:
        grants.grant(cast.registrar, cast.parent.email, cast.child.id, **kwargs)  # type: ignore[arg-type]
    events = runtime.audit_log.query(per_page=1).total
    for kwargs in scopes:
        with pytest.raises(Conflict, match="shared with them already"):
            grants.grant(cast.registrar, cast.parent.email, cast.child.id, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(
        Conflict, match=f"whole folder shared with them already until {until:%Y-%m-%d}"
    ):
        grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert len(grants.list_for_student(cast.registrar, cast.child.id)) == 3
    assert runtime.audit_log.query(per_page=1).total == events

    # Another category, another guardian, or once the first has ended: shared.
    grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.HEALTH,
    )
    grants.grant(cast.registrar, cast.other_parent.email, cast.other_child.id, GrantScope.FOLDER)
    [folder] = [
        g
        for g in grants.list_for_student(cast.registrar, cast.child.id)
        if g.scope is GrantScope.FOLDER
    ]
    grants.revoke(cast.registrar, folder.id, "Expiry to change")
    again = grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert again.expires_at is None and again.status is GrantStatus.ACTIVE


def test_what_still_shares_a_revoked_grants_records(runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child, category=Category.IEP)
    grants = runtime.grants

    def share(scope: GrantScope, **kwargs: object) -> uuid.UUID:
        info = grants.grant(cast.registrar, cast.parent.email, cast.child.id, scope, **kwargs)  # type: ignore[arg-type]
        return info.id

    folder = share(GrantScope.FOLDER)
    iep = share(GrantScope.CATEGORY, category=Category.IEP)
    health = share(GrantScope.CATEGORY, category=Category.HEALTH)
    one = share(GrantScope.DOCUMENT, document_id=document.id)

    def still(grant_id: uuid.UUID) -> list[uuid.UUID]:
        return [g.id for g in grants.still_sharing(cast.registrar, grant_id)]

    assert still(one) == [folder, iep]
    assert still(iep) == [folder]
    assert still(health) == [folder]
    assert still(folder) == []
    grants.revoke(cast.registrar, folder, "Folder no longer shared")
    assert still(one) == [iep]
    assert still(iep) == []
    with pytest.raises(Forbidden):
        grants.still_sharing(cast.parent, iep)
    with pytest.raises(NotFound):
        grants.still_sharing(cast.registrar, uuid.uuid4())
