"""Building audit events from an actor and the ids involved."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NoReturn, Protocol

from sqlalchemy.orm import Session

from audit.events import Action, Event, Outcome
from audit.log import AuditLog
from folders.actor import Actor
from folders.errors import Forbidden
from folders.models import Role
from folders.policy import Permission, Resource, decide


class AppendsEvents(Protocol):
    """Where a use case appends the events of its transaction: the :class:`AuditLog`, or
    a holder that appends them later in the same transaction (the roster import's)."""

    def append(self, session: Session, event: Event) -> object: ...


def _id(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def event_for(
    actor: Actor,
    action: Action,
    outcome: Outcome = Outcome.ALLOWED,
    *,
    student_id: uuid.UUID | None = None,
    document_id: uuid.UUID | None = None,
    version_id: uuid.UUID | None = None,
    grant_id: uuid.UUID | None = None,
    purpose: str | None = None,
    detail: str | None = None,
) -> Event:
    """An event carrying the actor, the request context and the ids involved."""
    return Event(
        action=action,
        outcome=outcome,
        actor_id=_id(actor.user_id),
        actor_role=actor.role.value if actor.role is not None else "operator",
        actor_email=actor.email,
        student_id=_id(student_id),
        document_id=_id(document_id),
        version_id=_id(version_id),
        grant_id=_id(grant_id),
        purpose=purpose,
        detail=detail,
        request_id=actor.context.request_id,
        client_address=actor.context.client_address,
        user_agent=actor.context.user_agent,
    )


def denied(
    actor: Actor,
    detail: str,
    *,
    student_id: uuid.UUID | None = None,
    document_id: uuid.UUID | None = None,
    version_id: uuid.UUID | None = None,
) -> Event:
    """The ``access.denied`` event of a refusal; ``detail`` says what was asked and why not."""
    return event_for(
        actor,
        Action.ACCESS_DENIED,
        Outcome.DENIED,
        student_id=student_id,
        document_id=document_id,
        version_id=version_id,
        detail=detail,
    )


def refuse(audit: AuditLog, actor: Actor, detail: str, message: str = "") -> NoReturn:
    """Record the refusal ``detail`` (what was asked, and why not) as ``access.denied``,
    then raise Forbidden(``message``). Raises AuditUnavailable if it cannot be recorded,
    so a refusal is never silent."""
    audit.record(denied(actor, detail))
    raise Forbidden(message)


def require(
    audit: AuditLog, actor: Actor, permission: Permission, now: datetime, message: str = ""
) -> None:
    """Return when the policy lets ``actor`` have ``permission`` on no particular record
    (the role gate of staff use cases); otherwise :func:`refuse`, raising Forbidden or
    AuditUnavailable."""
    decision = decide(actor, permission, Resource(), now)
    if not decision.allowed:
        refuse(audit, actor, f"{permission.value}: {decision.reason.value}", message)


def require_guardian(audit: AuditLog, actor: Actor, what: str) -> uuid.UUID:
    """The account id of ``actor``, a guardian. For anyone else the refusal of ``what``
    is recorded and Forbidden raised (AuditUnavailable if it cannot be recorded)."""
    if actor.role is not Role.GUARDIAN or actor.user_id is None:
        refuse(audit, actor, f"{what}: guardians only")
    return actor.user_id
