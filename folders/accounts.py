"""User accounts: creation, passwords (Argon2id), authentication, disabling and enabling."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog, Page, last_page
from folders.actor import Actor, RequestContext
from folders.auditing import event_for, require
from folders.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound
from folders.models import PasswordToken, Role, User
from folders.policy import Permission
from folders.students import escape_like

MIN_PASSWORD_LENGTH = 12
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# A hash nobody's password matches, so an unknown email costs as much as a wrong password.
_TIMING_DUMMY_PASSWORD = "satchel-timing-equaliser"  # noqa: S105


@dataclass(frozen=True)
class UserInfo:
    id: uuid.UUID
    email: str
    display_name: str
    role: Role
    active: bool
    has_password: bool
    created_at: datetime
    last_login_at: datetime | None
    # A browser session counts only while it carries this (see User.session_epoch).
    session_epoch: int


def normalize_email(email: str) -> str:
    """Lower-case and trim an email; InvalidInput if it is not shaped like one."""
    cleaned = email.strip().lower()
    if not cleaned:
        raise InvalidInput("Enter an email address.")
    if not _EMAIL.match(cleaned) or len(cleaned) > 254:
        raise InvalidInput(f"Not a valid email address: {email!r}.")
    return cleaned


def check_password_strength(password: str) -> None:
    """InvalidInput unless the password is at least MIN_PASSWORD_LENGTH characters."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")


class Accounts:
    """Use cases on user accounts. Only admins and the server operator manage accounts."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        audit: AuditLog,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._hasher = hasher or PasswordHasher()  # argon2-cffi's default is Argon2id
        self._dummy_hash = self._hasher.hash(_TIMING_DUMMY_PASSWORD)

    def add_user(
        self,
        actor: Actor,
        email: str,
        role: Role,
        *,
        display_name: str | None = None,
        password: str | None = None,
    ) -> UserInfo:
        """Create an account (audited); Conflict if the email is taken, InvalidInput on bad
        values, AuditUnavailable (then no account exists)."""
        self.require_admin(actor)
        address = normalize_email(email)
        if password is not None:
            check_password_strength(password)
        user = User(
            email=address,
            display_name=(display_name or address.split("@")[0]).strip()[:200],
            role=role,
            active=True,
            password_hash=self._hasher.hash(password) if password is not None else None,
            created_at=self._clock(),
        )
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                session.add(user)
                session.flush()
                self._audit.append(
                    session,
                    event_for(actor, Action.USER_CREATE, detail=f"{address} ({role.value})"),
                )
        except IntegrityError:
            raise Conflict(f"An account with the email {address} already exists.") from None
        return _info(user)

    def set_password(self, actor: Actor, email: str, password: str) -> UserInfo:
        """Replace a user's password and sign out their sessions; NotFound for an
        unknown email."""
        self.require_admin(actor)
        check_password_strength(password)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            user = self._get(session, email)
            user.password_hash = self._hasher.hash(password)
            user.session_epoch += 1
            self._audit.append(
                session, event_for(actor, Action.USER_UPDATE, detail=f"{user.email}: password set")
            )
        return _info(user)

    def hash_password(self, password: str) -> str:
        """The Argon2id hash of an acceptable password; InvalidInput if it is too weak."""
        check_password_strength(password)
        return self._hasher.hash(password)

    def disable(self, actor: Actor, email: str) -> UserInfo:
        """Disable an account so it can no longer log in; NotFound for an unknown email.
        An account disabled already stays as it is, and nothing is recorded."""
        self.require_admin(actor)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            user = self._get(session, email)
            if not user.active:
                return _info(user)
            user.active = False
            self._audit.append(session, event_for(actor, Action.USER_DISABLE, detail=user.email))
        return _info(user)

    def enable(self, actor: Actor, email: str) -> UserInfo:
        """Let a disabled account log in again, with the password it had; NotFound for
        an unknown email. Sessions and unused password links from before stay dead.
        An active account stays as it is, and nothing is recorded."""
        self.require_admin(actor)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            user = self._get(session, email)
            if user.active:
                return _info(user)
            user.active = True
            user.session_epoch += 1
            session.execute(
                update(PasswordToken)
                .where(PasswordToken.user_id == user.id, PasswordToken.used_at.is_(None))
                .values(used_at=self._clock())
            )
            self._audit.append(session, event_for(actor, Action.USER_ENABLE, detail=user.email))
        return _info(user)

    def find_users(
        self, actor: Actor, query: str = "", *, page: int = 1, per_page: int = 50
    ) -> Page[UserInfo]:
        """Accounts whose email or name contains every word of ``query`` (every account
        when it is empty), by role then email, one page at a time; a page past the last
        is the last page. Admins only (Forbidden)."""
        self.require_admin(actor)
        page, per_page = max(1, page), min(max(1, per_page), 200)
        where = [
            or_(
                func.lower(User.email).like(f"%{escape_like(term)}%", escape="\\"),
                func.lower(User.display_name).like(f"%{escape_like(term)}%", escape="\\"),
            )
            for term in query.lower().split()[:5]
        ]
        with Session(self._engine) as session:
            total = session.scalar(select(func.count()).select_from(User).where(*where)) or 0
            page = min(page, last_page(total, per_page))
            users = session.scalars(
                select(User)
                .where(*where)
                .order_by(User.role, User.email)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
            return Page(tuple(_info(u) for u in users), page, per_page, total)

    def list_users(self, actor: Actor, role: Role | None = None) -> list[UserInfo]:
        self.require_admin(actor)
        with Session(self._engine) as session:
            query = select(User).order_by(User.role, User.email)
            if role is not None:
                query = query.where(User.role == role)
            return [_info(u) for u in session.scalars(query)]

    def authenticate(self, email: str, password: str) -> UserInfo:
        """Check a login; AuthenticationFailed without saying what was wrong."""
        try:
            address = normalize_email(email)
        except InvalidInput:
            address = ""
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            user = session.scalar(select(User).where(User.email == address)) if address else None
            stored = user.password_hash if user is not None else None
            # SECURITY: always run one Argon2 verification, so response time does not
            # reveal whether the account exists.
            if not self._verify(stored or self._dummy_hash, password) or stored is None:
                raise AuthenticationFailed()
            assert user is not None
            if not user.active:
                raise AuthenticationFailed()
            if self._hasher.check_needs_rehash(stored):
                user.password_hash = self._hasher.hash(password)
            user.last_login_at = self._clock()
        return _info(user)

    def get_by_email(self, actor: Actor, email: str) -> UserInfo:
        """The account with this email (admins); NotFound if none."""
        self.require_admin(actor)
        with Session(self._engine) as session:
            return _info(self._get(session, email))

    def get(self, user_id: uuid.UUID) -> UserInfo:
        """The account with this id; NotFound if missing."""
        with Session(self._engine) as session:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound()
            return _info(user)

    def acting_as(self, email: str, context: RequestContext | None = None) -> Actor:
        """An Actor for the active account ``email`` (the CLI's ``--as``); NotFound otherwise."""
        with Session(self._engine) as session:
            user = self._get(session, email)
            if not user.active:
                raise NotFound(f"The account {user.email} is disabled.")
            return Actor(user.id, user.role, user.email, context or RequestContext())

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def _get(self, session: Session, email: str) -> User:
        user = session.scalar(select(User).where(User.email == normalize_email(email)))
        if user is None:
            raise NotFound(f"No account with the email {email.strip().lower()}.")
        return user

    def require_admin(self, actor: Actor) -> None:
        """Return if ``actor`` may manage accounts (an admin, the operator); otherwise
        record the refusal and raise Forbidden (AuditUnavailable if it cannot be)."""
        require(
            self._audit,
            actor,
            Permission.MANAGE_USERS,
            self._clock(),
            "Only administrators manage accounts.",
        )


def _info(user: User) -> UserInfo:
    return UserInfo(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=user.role,
        active=user.active,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
        session_epoch=user.session_epoch,
    )
