"""A guardian's list of what has been shared with them, marked new since their last visit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from folders.actor import Actor
from folders.documents import Documents, SharedDocument
from folders.errors import Forbidden
from folders.models import Grant, GrantScope, User


@dataclass(frozen=True)
class InboxItem:
    shared: SharedDocument
    shared_at: datetime  # the later of: the current version's upload, the grant covering it
    new: bool


@dataclass(frozen=True)
class Inbox:
    items: tuple[InboxItem, ...]  # newest first
    last_seen: datetime | None  # the previous visit, None on the first

    @property
    def new_count(self) -> int:
        return sum(1 for item in self.items if item.new)


class SharedInbox:
    """Opens a guardian's shared documents and remembers the visit."""

    def __init__(self, engine: Engine, documents: Documents, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._documents = documents
        self._clock = clock

    def open(self, actor: Actor) -> Inbox:
        """What the guardian may see now (each item confirmed by the policy), newest
        first; items shared or updated since the previous visit are ``new``.

        Raises Forbidden for anyone but a guardian (recorded by
        :meth:`Documents.shared_with`), AuditUnavailable.
        """
        shared = self._documents.shared_with(actor)
        now = self._clock()
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            user = session.get(User, actor.user_id)
            if user is None:
                raise Forbidden()
            last_seen = user.last_seen_shared_at
            user.last_seen_shared_at = now
            grants = session.scalars(
                select(Grant).where(Grant.guardian_id == actor.user_id, Grant.revoked_at.is_(None))
            ).all()
        items = []
        for item in shared:
            granted = [g.granted_at for g in grants if _covers(g, item, now)]
            # A folder shared today holds documents uploaded long ago: they are new too.
            shared_at = max([item.updated_at, min(granted)] if granted else [item.updated_at])
            items.append(InboxItem(item, shared_at, new=last_seen is None or shared_at > last_seen))
        items.sort(key=lambda i: i.shared_at, reverse=True)
        return Inbox(tuple(items), last_seen)


def _covers(grant: Grant, item: SharedDocument, now: datetime) -> bool:
    document = item.document
    if grant.student_id != document.student_id:
        return False
    if grant.expires_at is not None and grant.expires_at <= now:
        return False
    if grant.scope is GrantScope.FOLDER:
        return True
    if grant.scope is GrantScope.CATEGORY:
        return grant.category is document.category
    return grant.document_id == document.id
