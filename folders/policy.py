"""The access policy: the only place in Satchel that says yes (DESIGN §3).

``decide`` is a pure function of the actor, the action, the facts about the resource
(loaded by the caller from SQL in the same request) and the time. It keeps no cache, so
a revocation or an expiry takes effect on the very next request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from folders.actor import Actor
from folders.categories import Category
from folders.models import Grant, GrantScope, Guardianship, Role


class Permission(StrEnum):
    """What an actor wants to do."""

    VIEW_DOCUMENT = "view_document"  # read a document's contents (view, preview, download)
    VIEW_DOCUMENT_METADATA = "view_document_metadata"
    LIST_FOLDER = "list_folder"  # the whole folder of a student, every version (staff)
    MANAGE_FOLDER = "manage_folder"  # students, uploads, new versions, guardians
    MANAGE_GRANTS = "manage_grants"
    VIEW_STUDENT = "view_student"  # a guardian's own child's name and folder summary
    READ_AUDIT = "read_audit"
    MANAGE_USERS = "manage_users"
    MANAGE_KEYS = "manage_keys"


class Reason(StrEnum):
    OPERATOR = "operator"
    STAFF_ROLE = "staff_role"
    ROLE_NOT_PERMITTED = "role_not_permitted"
    NOT_GUARDIAN = "not_guardian_of_student"
    GUARDIANSHIP_ENDED = "guardianship_ended"
    GUARDIAN_RESTRICTED = "guardian_restricted"
    GRANT_ACTIVE = "grant_active"
    GRANT_EXPIRED = "grant_expired"
    GRANT_REVOKED = "grant_revoked"
    NOT_SHARED = "not_shared"
    GUARDIAN_OF_STUDENT = "guardian_of_student"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason


@dataclass(frozen=True)
class GuardianLink:
    """The guardian's link to the student, as stored."""

    restricted: bool
    ended_at: datetime | None

    @classmethod
    def of(cls, guardianship: Guardianship) -> GuardianLink:
        """What the policy needs to know of a stored guardianship."""
        return cls(guardianship.restricted, guardianship.ended_at)


@dataclass(frozen=True)
class GrantFacts:
    id: uuid.UUID
    scope: GrantScope
    document_id: uuid.UUID | None
    category: Category | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, grant: Grant) -> GrantFacts:
        """What the policy needs to know of a stored grant."""
        return cls(
            id=grant.id,
            scope=grant.scope,
            document_id=grant.document_id,
            category=grant.category,
            expires_at=grant.expires_at,
            revoked_at=grant.revoked_at,
        )

    def covers(self, document_id: uuid.UUID | None, category: Category | None) -> bool:
        """Whether this grant's scope includes the document (folder grants cover all,
        including documents added after the grant)."""
        if self.scope is GrantScope.FOLDER:
            return True
        if self.scope is GrantScope.CATEGORY:
            return category is not None and self.category is category
        return document_id is not None and self.document_id == document_id


@dataclass(frozen=True)
class Resource:
    """Facts about what is being accessed.

    ``link`` is the actor's guardianship of ``student_id`` (None: not a guardian of this
    student); ``grants`` are the actor's grants on this student, in any state.
    """

    student_id: uuid.UUID | None = None
    document_id: uuid.UUID | None = None
    category: Category | None = None
    link: GuardianLink | None = None
    grants: tuple[GrantFacts, ...] = field(default_factory=tuple)


_STAFF_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.REGISTRAR: frozenset(
        {
            Permission.VIEW_DOCUMENT,
            Permission.VIEW_DOCUMENT_METADATA,
            Permission.LIST_FOLDER,
            Permission.MANAGE_FOLDER,
            Permission.MANAGE_GRANTS,
            Permission.VIEW_STUDENT,
        }
    ),
    # Compliance reads the trail, never the records themselves.
    Role.COMPLIANCE: frozenset({Permission.READ_AUDIT}),
    Role.ADMIN: frozenset({Permission.MANAGE_USERS, Permission.MANAGE_KEYS}),
}


def decide(actor: Actor, permission: Permission, resource: Resource, now: datetime) -> Decision:
    """Whether ``actor`` may do ``permission`` on ``resource`` at ``now``, and why."""
    if actor.is_operator:
        # The operator at the server's command line holds the keys anyway; their
        # actions are still audited.
        return Decision(True, Reason.OPERATOR)
    if actor.role is None:
        return Decision(False, Reason.ROLE_NOT_PERMITTED)
    if actor.role is not Role.GUARDIAN:
        allowed = permission in _STAFF_PERMISSIONS[actor.role]
        return Decision(allowed, Reason.STAFF_ROLE if allowed else Reason.ROLE_NOT_PERMITTED)
    return _decide_for_guardian(permission, resource, now)


def _decide_for_guardian(permission: Permission, resource: Resource, now: datetime) -> Decision:
    if permission not in (
        Permission.VIEW_DOCUMENT,
        Permission.VIEW_DOCUMENT_METADATA,
        Permission.VIEW_STUDENT,
    ):
        return Decision(False, Reason.ROLE_NOT_PERMITTED)
    link = resource.link
    if link is None:
        return Decision(False, Reason.NOT_GUARDIAN)
    if link.ended_at is not None and link.ended_at <= now:
        return Decision(False, Reason.GUARDIANSHIP_ENDED)
    # SECURITY: a restricted guardian (e.g. by court order) sees nothing of the student,
    # whatever grants exist.
    if link.restricted:
        return Decision(False, Reason.GUARDIAN_RESTRICTED)
    if permission is Permission.VIEW_STUDENT:
        return Decision(True, Reason.GUARDIAN_OF_STUDENT)

    covering = [g for g in resource.grants if g.covers(resource.document_id, resource.category)]
    if any(_active(g, now) for g in covering):
        return Decision(True, Reason.GRANT_ACTIVE)
    if any(g.revoked_at is not None and g.revoked_at <= now for g in covering):
        return Decision(False, Reason.GRANT_REVOKED)
    if covering:
        return Decision(False, Reason.GRANT_EXPIRED)
    return Decision(False, Reason.NOT_SHARED)


def _active(grant: GrantFacts, now: datetime) -> bool:
    revoked = grant.revoked_at is not None and grant.revoked_at <= now
    expired = grant.expires_at is not None and grant.expires_at <= now
    return not revoked and not expired
