"""Grants: a registrar shares a document, a category or a whole folder with a guardian."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, Select, or_, select
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import AppendsEvents, event_for, require
from folders.categories import Category
from folders.documents import parse_category
from folders.errors import Conflict, Forbidden, InvalidInput, NotFound
from folders.links import guardian_link
from folders.models import Document, Grant, GrantScope, Guardianship, Role, Student, User
from folders.policy import GrantFacts, GuardianLink, Permission, Reason, Resource, decide
from folders.text import clean_text

GUARDIANSHIP_ENDED = "guardianship ended"
"""The reason recorded on the grants revoked because their guardian's link ended."""


class GrantStatus(StrEnum):
    """What a grant gives its guardian now (see :func:`grant_status`)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    # In force, but the policy ignores it: the guardian's link is restricted or ended.
    GUARDIAN_RESTRICTED = "guardian restricted"
    GUARDIAN_UNLINKED = "guardian unlinked"


@dataclass(frozen=True)
class GrantInfo:
    id: uuid.UUID
    guardian_id: uuid.UUID
    guardian_email: str
    student_id: uuid.UUID
    scope: GrantScope
    document_id: uuid.UUID | None
    document_title: str | None
    category: Category | None
    expires_at: datetime | None
    reason: str | None
    granted_by_email: str
    granted_at: datetime
    revoked_at: datetime | None
    revoked_by_email: str | None
    revoke_reason: str | None
    status: GrantStatus

    @property
    def in_force(self) -> bool:
        """Neither revoked nor expired: it gives access whenever the guardian's link
        allows, and it can still be revoked."""
        return self.status not in (GrantStatus.REVOKED, GrantStatus.EXPIRED)

    @property
    def scope_label(self) -> str:
        if self.scope is GrantScope.DOCUMENT:
            return f"document: {self.document_title}"
        if self.scope is GrantScope.CATEGORY:
            assert self.category is not None
            return f"category: {self.category.value}"
        return "whole folder"


def parse_scope(text: str) -> tuple[GrantScope, Category | None, uuid.UUID | None]:
    """``folder`` | ``category:NAME`` | ``document:ID``; InvalidInput otherwise."""
    kind, _, value = text.strip().partition(":")
    if kind == "folder" and not value:
        return GrantScope.FOLDER, None, None
    if kind == "category" and value:
        return GrantScope.CATEGORY, parse_category(value), None
    if kind == "document" and value:
        try:
            return GrantScope.DOCUMENT, None, uuid.UUID(value)
        except ValueError:
            raise InvalidInput(f"Not a document id: {value!r}.") from None
    raise InvalidInput(f"Scope must be folder, category:NAME or document:ID, not {text!r}.")


class Grants:
    """Grant and revoke guardian access; list a student's grants (registrars)."""

    def __init__(self, engine: Engine, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    def grant(
        self,
        actor: Actor,
        guardian_email: str,
        student_id: uuid.UUID,
        scope: GrantScope,
        *,
        category: Category | None = None,
        document_id: uuid.UUID | None = None,
        expires_at: datetime | None = None,
        reason: str | None = None,
    ) -> GrantInfo:
        """Share with a guardian linked to the student (not restricted).

        Raises Forbidden (not a registrar), NotFound (student, guardian, document),
        InvalidInput (restricted or unlinked guardian, past expiry, scope mismatch),
        Conflict (the guardian has a grant of this same scope in force already: a second
        one would outlive revoking the first), AuditUnavailable (then no grant exists).
        """
        self._require(actor)
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("The expiry date must be in the future.")
        if (scope is GrantScope.CATEGORY) != (category is not None) or (
            scope is GrantScope.DOCUMENT
        ) != (document_id is not None):
            raise InvalidInput("The scope does not match the category or document given.")
        why = clean_text(reason or "", "reason", max_length=500, required=False)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            student = session.get(Student, student_id)
            if student is None:
                raise NotFound("No such student.")
            guardian = session.scalar(
                select(User).where(User.email == guardian_email.strip().lower())
            )
            if guardian is None or guardian.role is not Role.GUARDIAN:
                raise NotFound(f"No guardian account with the email {guardian_email}.")
            # Locked, so an unlinking or restriction committing meanwhile is waited for
            # and seen here: it revokes only the grants committed before it.
            link = session.scalar(
                select(Guardianship)
                .where(
                    Guardianship.guardian_id == guardian.id,
                    Guardianship.student_id == student_id,
                )
                .with_for_update()
            )
            if link is None or link.ended_at is not None:
                raise InvalidInput(f"{guardian.email} is not a guardian of this student.")
            if link.restricted:
                raise InvalidInput(
                    f"{guardian.email} is restricted from this student's records "
                    f"({link.restriction_reason}); nothing can be shared with them."
                )
            document = None
            if document_id is not None:
                document = session.get(Document, document_id)
                if document is None or document.student_id != student_id:
                    raise NotFound("No such document in this student's folder.")
            same = session.scalars(
                _in_force(now).where(
                    Grant.guardian_id == guardian.id,
                    Grant.student_id == student_id,
                    Grant.scope == scope,
                    Grant.category.is_not_distinct_from(category),
                    Grant.document_id.is_not_distinct_from(document_id),
                )
            ).first()
            if same is not None:
                until = f" until {same.expires_at:%Y-%m-%d}" if same.expires_at else ""
                raise Conflict(
                    f"{guardian.email} has the {_scope_text(scope, category, document)} "
                    f"shared with them already{until}; nothing was changed. To change when "
                    "it ends, revoke that grant and share again."
                )
            grant = Grant(
                guardian_id=guardian.id,
                student_id=student_id,
                scope=scope,
                document_id=document_id,
                category=category,
                expires_at=expires_at,
                reason=why,
                granted_by=_user_id(actor),
                granted_at=now,
            )
            session.add(grant)
            session.flush()
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.GRANT_CREATE,
                    student_id=student_id,
                    document_id=document_id,
                    grant_id=grant.id,
                    detail=f"{guardian.email}: {_scope_text(scope, category, document)}"
                    + (f" until {expires_at.isoformat()}" if expires_at else ""),
                ),
            )
            info = self._info(session, grant, GuardianLink.of(link))
        self._audit.maybe_checkpoint()
        return info

    def revoke(self, actor: Actor, grant_id: uuid.UUID, reason: str) -> GrantInfo:
        """Revoke a grant with a reason; takes effect on the guardian's next request.

        Raises NotFound, InvalidInput (no reason, already revoked), AuditUnavailable.
        """
        self._require(actor)
        why = clean_text(reason, "reason for revoking", max_length=500)
        assert why is not None  # required: an empty reason raised
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            grant = session.get(Grant, grant_id, with_for_update=True)
            if grant is None:
                raise NotFound("No such grant.")
            revoke_grant(session, self._audit, actor, grant, why, self._clock())
            info = self._info(
                session, grant, guardian_link(session, grant.guardian_id, grant.student_id)
            )
        self._audit.maybe_checkpoint()
        return info

    def still_sharing(self, actor: Actor, grant_id: uuid.UUID) -> list[GrantInfo]:
        """The guardian's other grants in force that cover all that ``grant_id`` covers
        (a folder grant covers any category or document of the folder, a category grant
        its documents): after revoking it, what still shares the same records.

        Raises Forbidden, NotFound.
        """
        self._require(actor)
        now = self._clock()
        with Session(self._engine) as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound("No such grant.")
            document = session.get(Document, grant.document_id) if grant.document_id else None
            category = document.category if document is not None else grant.category
            others = session.scalars(
                _in_force(now)
                .where(
                    Grant.guardian_id == grant.guardian_id,
                    Grant.student_id == grant.student_id,
                    Grant.id != grant.id,
                )
                .order_by(Grant.granted_at)
            ).all()
            link = guardian_link(session, grant.guardian_id, grant.student_id)
            return [
                self._info(session, other, link)
                for other in others
                if other.scope is GrantScope.FOLDER
                or (
                    grant.scope is not GrantScope.FOLDER
                    and GrantFacts.of(other).covers(grant.document_id, category)
                )
            ]

    def list_for_student(
        self, actor: Actor, student_id: uuid.UUID, *, include_inactive: bool = False
    ) -> list[GrantInfo]:
        """The student's grants, newest first, each with its effective status.

        Only grants in force (neither revoked nor expired) unless ``include_inactive``;
        those include the grants of a restricted or former guardian, listed as such
        (:attr:`GrantStatus.GUARDIAN_RESTRICTED`, :attr:`GrantStatus.GUARDIAN_UNLINKED`)
        so they can still be seen and revoked. Raises Forbidden, NotFound.
        """
        self._require(actor)
        with Session(self._engine) as session:
            if session.get(Student, student_id) is None:
                raise NotFound("No such student.")
            grants = session.scalars(
                select(Grant)
                .where(Grant.student_id == student_id)
                .order_by(Grant.granted_at.desc())
            ).all()
            links = {
                row.guardian_id: GuardianLink.of(row)
                for row in session.scalars(
                    select(Guardianship).where(Guardianship.student_id == student_id)
                )
            }
            infos = [self._info(session, g, links.get(g.guardian_id)) for g in grants]
        return [g for g in infos if include_inactive or g.in_force]

    def _require(self, actor: Actor) -> None:
        require(self._audit, actor, Permission.MANAGE_GRANTS, self._clock())

    def _info(self, session: Session, grant: Grant, link: GuardianLink | None) -> GrantInfo:
        """The frozen view of ``grant``; ``link`` is its guardian's link to the student."""
        ids = [i for i in (grant.guardian_id, grant.granted_by, grant.revoked_by) if i]
        emails = {
            row.id: row.email
            for row in session.execute(select(User.id, User.email).where(User.id.in_(ids)))
        }
        document = session.get(Document, grant.document_id) if grant.document_id else None
        return GrantInfo(
            id=grant.id,
            guardian_id=grant.guardian_id,
            guardian_email=emails[grant.guardian_id],
            student_id=grant.student_id,
            scope=grant.scope,
            document_id=grant.document_id,
            document_title=document.title if document else None,
            category=grant.category,
            expires_at=grant.expires_at,
            reason=grant.reason,
            granted_by_email=emails[grant.granted_by],
            granted_at=grant.granted_at,
            revoked_at=grant.revoked_at,
            revoked_by_email=emails.get(grant.revoked_by) if grant.revoked_by else None,
            revoke_reason=grant.revoke_reason,
            status=grant_status(grant, link, self._clock()),
        )


def grant_status(grant: Grant, link: GuardianLink | None, now: datetime) -> GrantStatus:
    """What ``grant`` gives its guardian at ``now``, given their ``link`` to the student.

    "Active" only when the policy lets the guardian see what the grant covers, so a
    list of grants never claims access the policy would refuse. Otherwise the grant's
    own end (revoked, expired) is named first, as it is final, and then the link.
    """
    grantee = Actor(user_id=grant.guardian_id, role=Role.GUARDIAN, email="")
    # The resource is what the grant itself covers, so the grant always covers it.
    covered = Resource(
        grant.student_id, grant.document_id, grant.category, link, (GrantFacts.of(grant),)
    )
    decision = decide(grantee, Permission.VIEW_DOCUMENT_METADATA, covered, now)
    if decision.allowed:
        return GrantStatus.ACTIVE
    if grant.revoked_at is not None:
        return GrantStatus.REVOKED
    if grant.expires_at is not None and grant.expires_at <= now:
        return GrantStatus.EXPIRED
    if decision.reason is Reason.GUARDIAN_RESTRICTED:
        return GrantStatus.GUARDIAN_RESTRICTED
    return GrantStatus.GUARDIAN_UNLINKED


def revoke_grant(
    session: Session, audit: AppendsEvents, actor: Actor, grant: Grant, reason: str, now: datetime
) -> None:
    """Revoke ``grant`` for ``reason`` and append its ``grant.revoke`` event, both in the
    caller's transaction, so neither happens without the other. Every revocation goes
    through here (:meth:`Grants.revoke`, the end of a guardianship).

    The caller has checked the actor's permission and cleaned ``reason``. Raises
    InvalidInput (revoked already), Forbidden (an actor without an account: the row
    names who revoked), AuditUnavailable.
    """
    if grant.revoked_at is not None:
        raise InvalidInput("This grant is already revoked.")
    grant.revoked_at = now
    grant.revoked_by = _user_id(actor)
    grant.revoke_reason = reason
    session.flush()
    audit.append(
        session,
        event_for(
            actor,
            Action.GRANT_REVOKE,
            student_id=grant.student_id,
            document_id=grant.document_id,
            grant_id=grant.id,
            detail=reason,
        ),
    )


def revoke_guardian_grants(
    session: Session,
    audit: AppendsEvents,
    actor: Actor,
    guardian_id: uuid.UUID,
    student_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> None:
    """Revoke, in the caller's transaction, every grant of ``guardian_id`` on
    ``student_id`` still in force at ``now`` (expired ones can never work again), each
    with its event. Raises like :func:`revoke_grant`.
    """
    in_force = session.scalars(
        _in_force(now)
        .where(Grant.guardian_id == guardian_id, Grant.student_id == student_id)
        .order_by(Grant.granted_at, Grant.id)
        .with_for_update()
    ).all()
    for grant in in_force:
        revoke_grant(session, audit, actor, grant, reason, now)


def _user_id(actor: Actor) -> uuid.UUID:
    if actor.user_id is None:
        raise Forbidden("Grants are made and revoked as a registrar account (use --as EMAIL).")
    return actor.user_id


def _in_force(now: datetime) -> Select[tuple[Grant]]:
    """Grants neither revoked nor expired at ``now``."""
    return select(Grant).where(
        Grant.revoked_at.is_(None), or_(Grant.expires_at.is_(None), Grant.expires_at > now)
    )


def _scope_text(scope: GrantScope, category: Category | None, document: Document | None) -> str:
    if scope is GrantScope.FOLDER:
        return "whole folder"
    if scope is GrantScope.CATEGORY:
        assert category is not None
        return f"category {category.value}"
    assert document is not None
    return f"document {document.title}"
