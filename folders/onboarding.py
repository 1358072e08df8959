"""Account onboarding from the web: audited account creation and disabling, and
one-time password-set links (an administrator issues one, the user sets a password).

The token is random (256 bits) and only its SHA-256 is stored, so a copy of the database
cannot be used to take over an account. A token works once, until it expires, and only
for an active account; issuing a new link retires the user's older unused ones.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog
from folders.accounts import Accounts, UserInfo
from folders.actor import Actor, RequestContext
from folders.auditing import event_for
from folders.errors import InvalidInput, NotFound
from folders.models import PasswordToken, Role, User

LINK_LIFETIME = timedelta(hours=72)


def new_token() -> str:
    """256 random bits, URL-safe: the secret part of a password-set link."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedLink:
    token: str  # shown once; only its hash is stored
    user: UserInfo
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Onboarding:
    """Issue and redeem password-set links."""

    def __init__(
        self,
        engine: Engine,
        accounts: Accounts,
        audit: AuditLog,
        clock: Callable[[], datetime],
        *,
        token_factory: Callable[[], str] = new_token,
        lifetime: timedelta = LINK_LIFETIME,
    ) -> None:
        self._engine = engine
        self._accounts = accounts
        self._audit = audit
        self._clock = clock
        self._token_factory = token_factory
        self._lifetime = lifetime

    def create_account(
        self, actor: Actor, email: str, role: Role, display_name: str | None = None
    ) -> UserInfo:
        """Create an account without a password (it is set through a link); audited.

        Raises Forbidden, Conflict (email taken), InvalidInput, AuditUnavailable.
        """
        self._accounts.require_admin(actor)
        return self._accounts.add_user(actor, email, role, display_name=display_name)

    def disable_account(self, actor: Actor, user_id: uuid.UUID) -> UserInfo:
        """Disable an account: it cannot log in, and its unused links stop working.

        Raises Forbidden, NotFound, InvalidInput (an admin disabling themself),
        AuditUnavailable.
        """
        self._accounts.require_admin(actor)
        if actor.user_id == user_id:
            raise InvalidInput("You cannot disable your own account.")
        target = self._accounts.get(user_id)
        return self._accounts.disable(actor, target.email)

    def enable_account(self, actor: Actor, user_id: uuid.UUID) -> UserInfo:
        """Enable a disabled account again (see :meth:`Accounts.enable`).

        Raises Forbidden, NotFound, AuditUnavailable.
        """
        self._accounts.require_admin(actor)
        target = self._accounts.get(user_id)
        return self._accounts.enable(actor, target.email)

    def issue(self, actor: Actor, user_id: uuid.UUID) -> IssuedLink:
        """A fresh link for an active account (admins); older unused links stop working.

        Raises Forbidden (not an admin), NotFound (no such account), InvalidInput
        (disabled account), AuditUnavailable (then no link exists).
        """
        self._accounts.require_admin(actor)
        now = self._clock()
        token = self._token_factory()
        with Session(self._engine) as session, session.begin():
            user = session.get(User, user_id)
            if user is None:
                raise NotFound("No such account.")
            if not user.active:
                raise InvalidInput(f"The account {user.email} is disabled.")
            session.execute(
                update(PasswordToken)
                .where(PasswordToken.user_id == user.id, PasswordToken.used_at.is_(None))
                .values(used_at=now)
            )
            session.add(
                PasswordToken(
                    user_id=user.id,
                    token_hash=_digest(token),
                    created_by=actor.user_id,
                    created_at=now,
                    expires_at=now + self._lifetime,
                )
            )
            self._audit.append(
                session,
                event_for(
                    actor, Action.USER_UPDATE, detail=f"{user.email}: password-set link issued"
                ),
            )
        return IssuedLink(token, self._accounts.get(user_id), now + self._lifetime)

    def check(self, token: str) -> UserInfo:
        """The account a usable token belongs to; NotFound if unknown, used or expired."""
        with Session(self._engine) as session:
            row = self._usable(session, token, self._clock())
            return self._accounts.get(row.user_id)

    def redeem(self, token: str, password: str, context: RequestContext) -> UserInfo:
        """Set the password of the token's account and use the token up.

        Raises InvalidInput (weak password; the token stays usable), NotFound
        (unknown, used or expired token, or disabled account), AuditUnavailable.
        """
        password_hash = self._accounts.hash_password(password)
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            row = self._usable(session, token, now)
            # SECURITY: single use even with two requests in flight: only the one whose
            # conditional update changes the row goes on.
            claimed = session.scalar(
                update(PasswordToken)
                .where(PasswordToken.id == row.id, PasswordToken.used_at.is_(None))
                .values(used_at=now)
                .returning(PasswordToken.id)
            )
            if claimed is None:
                raise NotFound("This link has already been used.")
            user = session.get(User, row.user_id)
            assert user is not None
            # The token claim, the new password and the event commit together.
            user.password_hash = password_hash
            user.session_epoch += 1
            actor = Actor(user.id, user.role, user.email, context)
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.USER_UPDATE,
                    detail=f"{user.email}: password set with a one-time link",
                ),
            )
            user_id = user.id
        return self._accounts.get(user_id)

    def _usable(self, session: Session, token: str, now: datetime) -> PasswordToken:
        digest = _digest(token)
        row = session.scalar(select(PasswordToken).where(PasswordToken.token_hash == digest))
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise NotFound("This link is not valid any more. Ask an administrator for a new one.")
        user = session.get(User, row.user_id)
        if user is None or not user.active:
            raise NotFound("This link is not valid any more. Ask an administrator for a new one.")
        return row
