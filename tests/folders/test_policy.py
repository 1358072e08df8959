"""The access policy as a table: every role, permission, relationship and grant state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from folders.actor import Actor
from folders.categories import Category
from folders.models import GrantScope, Role
from folders.policy import (
    Decision,
    GrantFacts,
    GuardianLink,
    Permission,
    Reason,
    Resource,
    decide,
)

NOW = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(days=1)
FUTURE = NOW + timedelta(days=30)
STUDENT = uuid.uuid4()
DOCUMENT = uuid.uuid4()
OTHER_DOCUMENT = uuid.uuid4()
IEP = Category.IEP


def actor(role: Role) -> Actor:
    return Actor(user_id=uuid.uuid4(), role=role, email=f"{role.value}@example.org")


def grant(
    scope: GrantScope,
    *,
    document: uuid.UUID | None = None,
    category: Category | None = None,
    expires: datetime | None = None,
    revoked: datetime | None = None,
) -> GrantFacts:
    return GrantFacts(uuid.uuid4(), scope, document, category, expires, revoked)


LINKED = GuardianLink(restricted=False, ended_at=None)
RESTRICTED = GuardianLink(restricted=True, ended_at=None)
ENDED = GuardianLink(restricted=False, ended_at=PAST)
FOLDER = grant(GrantScope.FOLDER)


def doc(
    link: GuardianLink | None,
    *grants: GrantFacts,
    category: Category = IEP,
    document: uuid.UUID = DOCUMENT,
) -> Resource:
    return Resource(STUDENT, document, category, link, tuple(grants))


STAFF = {
    Role.REGISTRAR: {
        Permission.VIEW_DOCUMENT,
        Permission.VIEW_DOCUMENT_METADATA,
        Permission.LIST_FOLDER,
        Permission.MANAGE_FOLDER,
        Permission.MANAGE_GRANTS,
        Permission.VIEW_STUDENT,
    },
    Role.COMPLIANCE: {Permission.READ_AUDIT},
    Role.ADMIN: {Permission.MANAGE_USERS, Permission.MANAGE_KEYS},
}


@pytest.mark.parametrize("role", list(STAFF))
@pytest.mark.parametrize("permission", list(Permission))
def test_staff_roles(role: Role, permission: Permission) -> None:
    expected = permission in STAFF[role]
    reason = Reason.STAFF_ROLE if expected else Reason.ROLE_NOT_PERMITTED
    assert decide(actor(role), permission, doc(None), NOW) == Decision(expected, reason)


@pytest.mark.parametrize("permission", list(Permission))
def test_the_operator_may_do_anything(permission: Permission) -> None:
    assert decide(Actor.operator(), permission, Resource(), NOW) == Decision(True, Reason.OPERATOR)


GUARDIAN_ONLY_VIEWS = {Permission.VIEW_DOCUMENT, Permission.VIEW_DOCUMENT_METADATA}


@pytest.mark.parametrize(
    "permission", sorted(set(Permission) - GUARDIAN_ONLY_VIEWS - {Permission.VIEW_STUDENT})
)
def test_guardians_never_manage_or_read_audit(permission: Permission) -> None:
    decision = decide(actor(Role.GUARDIAN), permission, doc(LINKED, FOLDER), NOW)
    assert decision == Decision(False, Reason.ROLE_NOT_PERMITTED)


# (case, resource, expected allowed, expected reason) for a guardian viewing DOCUMENT (IEP).
GUARDIAN_TABLE = [
    ("folder grant, active", doc(LINKED, FOLDER), True, Reason.GRANT_ACTIVE),
    (
        "folder grant covers a document added after the grant",
        doc(LINKED, FOLDER, document=uuid.uuid4()),
        True,
        Reason.GRANT_ACTIVE,
    ),
    (
        "category grant, matching category",
        doc(LINKED, grant(GrantScope.CATEGORY, category=IEP)),
        True,
        Reason.GRANT_ACTIVE,
    ),
    (
        "category not covered",
        doc(LINKED, grant(GrantScope.CATEGORY, category=Category.HEALTH)),
        False,
        Reason.NOT_SHARED,
    ),
    (
        "document grant for this document",
        doc(LINKED, grant(GrantScope.DOCUMENT, document=DOCUMENT)),
        True,
        Reason.GRANT_ACTIVE,
    ),
    (
        "document grant for another document",
        doc(LINKED, grant(GrantScope.DOCUMENT, document=OTHER_DOCUMENT)),
        False,
        Reason.NOT_SHARED,
    ),
    (
        "grant expiring in the future",
        doc(LINKED, grant(GrantScope.FOLDER, expires=FUTURE)),
        True,
        Reason.GRANT_ACTIVE,
    ),
    (
        "expired grant",
        doc(LINKED, grant(GrantScope.FOLDER, expires=PAST)),
        False,
        Reason.GRANT_EXPIRED,
    ),
    (
        "grant expiring exactly now",
        doc(LINKED, grant(GrantScope.FOLDER, expires=NOW)),
        False,
        Reason.GRANT_EXPIRED,
    ),
    (
        "revoked grant",
        doc(LINKED, grant(GrantScope.FOLDER, revoked=PAST)),
        False,
        Reason.GRANT_REVOKED,
    ),
    (
        "revoked folder grant but an active category grant",
        doc(
            LINKED, grant(GrantScope.FOLDER, revoked=PAST), grant(GrantScope.CATEGORY, category=IEP)
        ),
        True,
        Reason.GRANT_ACTIVE,
    ),
    ("no grant at all", doc(LINKED), False, Reason.NOT_SHARED),
    (
        "restricted guardian with an active folder grant",
        doc(RESTRICTED, FOLDER),
        False,
        Reason.GUARDIAN_RESTRICTED,
    ),
    (
        "another family's student (no link), even with a grant row",
        doc(None, FOLDER),
        False,
        Reason.NOT_GUARDIAN,
    ),
    (
        "grant for a guardian whose link was removed",
        doc(ENDED, FOLDER),
        False,
        Reason.GUARDIANSHIP_ENDED,
    ),
    (
        "link ending in the future still counts",
        doc(GuardianLink(False, FUTURE), FOLDER),
        True,
        Reason.GRANT_ACTIVE,
    ),
]


@pytest.mark.parametrize(
    ("case", "resource", "allowed", "reason"),
    GUARDIAN_TABLE,
    ids=[row[0] for row in GUARDIAN_TABLE],
)
@pytest.mark.parametrize("permission", sorted(GUARDIAN_ONLY_VIEWS))
def test_guardian_viewing_a_document(
    case: str, resource: Resource, allowed: bool, reason: Reason, permission: Permission
) -> None:
    assert decide(actor(Role.GUARDIAN), permission, resource, NOW) == Decision(allowed, reason)


@pytest.mark.parametrize(
    ("link", "allowed", "reason"),
    [
        (LINKED, True, Reason.GUARDIAN_OF_STUDENT),
        (RESTRICTED, False, Reason.GUARDIAN_RESTRICTED),
        (ENDED, False, Reason.GUARDIANSHIP_ENDED),
        (None, False, Reason.NOT_GUARDIAN),
    ],
)
def test_guardian_viewing_the_student(
    link: GuardianLink | None, allowed: bool, reason: Reason
) -> None:
    resource = Resource(STUDENT, link=link)
    assert decide(actor(Role.GUARDIAN), Permission.VIEW_STUDENT, resource, NOW) == Decision(
        allowed, reason
    )


def test_an_actor_without_a_role_is_refused() -> None:
    nobody = Actor(user_id=uuid.uuid4(), role=None, email="x@example.org")
    assert decide(nobody, Permission.VIEW_DOCUMENT, doc(LINKED, FOLDER), NOW) == Decision(
        False, Reason.ROLE_NOT_PERMITTED
    )
