"""Login throttling kept in SQL, and the audited login use case built on it.

After ``per_account`` failures for one email, or ``per_address`` failures from one client
address, within ``window``, further attempts are refused without checking the password
until the oldest counted failure leaves the window. The counters live in the database so
they hold across gunicorn workers and restarts (DESIGN §8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, delete, func, or_, select, update
from sqlalchemy.orm import Session

from audit.events import Action, Event, Outcome
from audit.log import AuditLog
from folders.accounts import Accounts, UserInfo
from folders.actor import Actor, RequestContext
from folders.auditing import event_for
from folders.errors import AuthenticationFailed, FoldersError
from folders.models import AttemptOutcome, LoginAttempt

_COUNTED = (AttemptOutcome.PENDING, AttemptOutcome.FAILED)
UNKNOWN_ADDRESS = "unknown"


@dataclass(frozen=True)
class ThrottleLimits:
    per_account: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)
    # Attempts older than this are pruned; it must be longer than ``window``.
    keep: timedelta = timedelta(days=1)


class LoginThrottled(FoldersError):
    """Too many recent failures for this account or address; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(
            "Too many failed logins. Wait "
            + ("a minute" if minutes == 1 else f"{minutes} minutes")
            + " and try again."
        )
        self.retry_after = retry_after


class LoginThrottle:
    """Counts login attempts per email and per client address in SQL."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        limits: ThrottleLimits = ThrottleLimits(),
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._limits = limits

    def begin(self, email: str, client_address: str | None) -> int:
        """Record an attempt before the password is checked; return its id.

        Raises LoginThrottled (the attempt is then recorded as throttled) when the
        account or the address has used up its failures within the window.
        """
        now = self._clock()
        address = (client_address or UNKNOWN_ADDRESS)[:64]
        key = email.strip().lower()[:254]
        with Session(self._engine) as session, session.begin():
            session.execute(
                delete(LoginAttempt).where(
                    or_(LoginAttempt.email == key, LoginAttempt.client_address == address),
                    LoginAttempt.attempted_at < now - self._limits.keep,
                )
            )
            attempt = LoginAttempt(
                email=key,
                client_address=address,
                attempted_at=now,
                outcome=AttemptOutcome.PENDING,
            )
            session.add(attempt)
            session.flush()
            attempt_id = attempt.id
        # SECURITY: the attempt is committed (as pending, which counts) before counting,
        # so concurrent guesses in other workers see each other.
        with Session(self._engine) as session, session.begin():
            waits = [
                self._wait(
                    session,
                    LoginAttempt.email == key,
                    attempt_id,
                    self._limits.per_account,
                    self._last_success(session, key),
                    now,
                ),
                self._wait(
                    session,
                    LoginAttempt.client_address == address,
                    attempt_id,
                    self._limits.per_address,
                    None,
                    now,
                ),
            ]
            wait = max((w for w in waits if w is not None), default=None)
            if wait is not None:
                self._set(session, attempt_id, AttemptOutcome.THROTTLED)
        if wait is not None:
            raise LoginThrottled(max(1, math.ceil(wait.total_seconds())))
        return attempt_id

    def finish(self, attempt_id: int, *, succeeded: bool) -> None:
        """Record how the password check of ``attempt_id`` ended."""
        outcome = AttemptOutcome.SUCCEEDED if succeeded else AttemptOutcome.FAILED
        with Session(self._engine) as session, session.begin():
            self._set(session, attempt_id, outcome)

    def _wait(
        self,
        session: Session,
        condition: ColumnElement[bool],
        attempt_id: int,
        limit: int,
        after_id: int | None,
        now: datetime,
    ) -> timedelta | None:
        """How long until fewer than ``limit`` counted failures precede this attempt
        (only those after attempt ``after_id``, when given)."""
        times = session.scalars(
            select(LoginAttempt.attempted_at)
            .where(
                condition,
                LoginAttempt.id < attempt_id,
                LoginAttempt.id > (after_id or 0),
                LoginAttempt.outcome.in_(_COUNTED),
                LoginAttempt.attempted_at > now - self._limits.window,
            )
            .order_by(LoginAttempt.attempted_at.desc())
            .limit(limit)
        ).all()
        if len(times) < limit:
            return None
        # Allowed again once the oldest of the last `limit` failures leaves the window.
        return times[-1] + self._limits.window - now

    @staticmethod
    def _last_success(session: Session, email: str) -> int | None:
        # A successful login starts the account's count afresh; the address count is
        # not reset, or one valid account would shelter guessing at all the others.
        return session.scalar(
            select(func.max(LoginAttempt.id)).where(
                LoginAttempt.email == email, LoginAttempt.outcome == AttemptOutcome.SUCCEEDED
            )
        )

    @staticmethod
    def _set(session: Session, attempt_id: int, outcome: AttemptOutcome) -> None:
        session.execute(
            update(LoginAttempt).where(LoginAttempt.id == attempt_id).values(outcome=outcome)
        )


class Logins:
    """The login use case: throttle, check the password, audit every outcome."""

    def __init__(
        self,
        accounts: Accounts,
        throttle: LoginThrottle,
        audit: AuditLog,
    ) -> None:
        self._accounts = accounts
        self._throttle = throttle
        self._audit = audit

    def log_in(self, email: str, password: str, context: RequestContext) -> UserInfo:
        """The user for this email and password.

        Raises LoginThrottled (nothing is checked), AuthenticationFailed (wrong email,
        password or disabled account, never saying which), AuditUnavailable.
        """
        try:
            attempt = self._throttle.begin(email, context.client_address)
        except LoginThrottled as e:
            self._audit.record(
                _anonymous_event(
                    Action.LOGIN_THROTTLED, email, context, f"retry after {e.retry_after} s"
                )
            )
            raise
        try:
            user = self._accounts.authenticate(email, password)
        except AuthenticationFailed:
            self._throttle.finish(attempt, succeeded=False)
            self._audit.record(_anonymous_event(Action.LOGIN_FAILED, email, context, None))
            raise
        self._throttle.finish(attempt, succeeded=True)
        actor = Actor(user.id, user.role, user.email, context)
        self._audit.record(event_for(actor, Action.LOGIN))
        return user


def _anonymous_event(
    action: Action, email: str, context: RequestContext, detail: str | None
) -> Event:
    """An event for someone not (yet) signed in: the email is what they typed."""
    return Event(
        action=action,
        outcome=Outcome.DENIED,
        actor_id=None,
        actor_role="anonymous",
        actor_email=" ".join(email.split())[:254] or "(none)",
        detail=detail,
        request_id=context.request_id,
        client_address=context.client_address,
        user_agent=context.user_agent,
    )
