"""The record of disclosures of a student's folder (FERPA, 34 CFR 99.32), read from the
audit log, and the purposes staff state when they open a record.

Guardians see what school staff did with their child's folder: views, downloads,
exports, and the sharing with and revoking from *them*. They never see other guardians'
activity, whom else the school shared with, or anything about a document they may not
see now. Compliance sees every disclosure, guardians' included.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit.events import Action, Outcome, RecordedEvent
from audit.log import AuditLog, EventFilter, Page, last_page
from folders.actor import Actor
from folders.auditing import denied, event_for, require, require_guardian
from folders.errors import NotFound
from folders.links import guardian_link
from folders.models import Document, Grant, Role, Student
from folders.policy import Decision, GrantFacts, Permission, Resource, decide
from folders.students import student_by_district_id

DEFAULT_PURPOSE = "Educational interest (FERPA school official)"
STAFF_PURPOSES = (
    DEFAULT_PURPOSE,
    "Records request from parent",
    "Transfer to another school",
    "Correction or review",
)
"""What staff may give as the reason for opening a record (recorded in the event)."""

DISCLOSURE_ACTIONS = frozenset(
    {
        Action.DOCUMENT_VIEW,
        Action.DOCUMENT_PREVIEW,
        Action.DOCUMENT_DOWNLOAD,
        Action.FOLDER_VIEW,
        Action.FOLDER_EXPORT,
        Action.GRANT_CREATE,
        Action.GRANT_REVOKE,
        Action.AUDIT_EXPORT,
    }
)
_SHARING = frozenset({Action.GRANT_CREATE, Action.GRANT_REVOKE})
_NOT_STAFF = frozenset({Role.GUARDIAN.value, "anonymous"})

_DESCRIPTIONS = {
    Action.DOCUMENT_VIEW: "Viewed a document",
    Action.DOCUMENT_PREVIEW: "Viewed a document",
    Action.DOCUMENT_DOWNLOAD: "Downloaded a document",
    Action.FOLDER_VIEW: "Looked at the list of documents in the folder",
    Action.FOLDER_EXPORT: "Exported the folder",
    Action.GRANT_CREATE: "Shared records with a guardian",
    Action.GRANT_REVOKE: "Ended a guardian's access to shared records",
    Action.AUDIT_EXPORT: "Exported audit events about the student",
}
# A guardian only ever sees the sharing that concerns them.
_FOR_GUARDIAN = {
    **_DESCRIPTIONS,
    Action.GRANT_CREATE: "Shared records with you",
    Action.GRANT_REVOKE: "Ended your access to shared records",
}
UNNAMED_DOCUMENT = "a document"
"""Shown for the document of an event the reader is shown but may not see the title of."""


@dataclass(frozen=True)
class StudentRef:
    id: uuid.UUID
    district_id: str
    full_name: str


@dataclass(frozen=True)
class Disclosure:
    sequence: int
    at: datetime
    action: Action
    description: str
    actor_email: str | None
    actor_role: str | None
    document_title: str | None
    purpose: str | None
    detail: str | None  # None for guardians: it may name other people


@dataclass(frozen=True)
class _GuardianView:
    student: StudentRef
    own_grants: frozenset[str]  # ids of the guardian's grants on the student, any state
    visible_documents: frozenset[str]  # ids of the documents they may see now


@dataclass(frozen=True)
class DisclosureRecord:
    student: StudentRef
    entries: Page[Disclosure]  # newest first


class Disclosures:
    """Read a student's record of disclosures from the audit log."""

    def __init__(self, engine: Engine, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    def find_student(self, actor: Actor, district_id: str) -> StudentRef:
        """A student by district id, for those who read the audit trail; NotFound."""
        self._require_audit_reader(actor)
        with Session(self._engine) as session:
            student = student_by_district_id(session, district_id)
            if student is None:
                raise NotFound(f"No student with the district id {district_id.strip()}.")
            return _ref(student)

    def for_guardian(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        *,
        page: int = 1,
        per_page: int = 50,
        up_to_seq: int | None = None,
    ) -> DisclosureRecord:
        """What staff did with the guardian's child's folder, newest first.

        Nothing is shown about a document the guardian may not see now (the policy's
        ``view_document_metadata`` at this request): what staff did with it is left
        out altogether rather than listed with its title hidden, because even "a
        registrar viewed a document on this date" tells of a record that is kept and
        not shared with them, and DESIGN §3 reveals nothing of what an actor may not
        see. Totals and pages count the entries shown. The exception is the sharing
        with and revoking from this guardian, which is about their own access and
        was theirs to know: it stays, naming its document only while the guardian may
        see it (:data:`UNNAMED_DOCUMENT` otherwise). Pages are read from one snapshot of
        the log, as :meth:`AuditLog.query`'s are: the page's ``up_to_seq``, passed back
        for the other pages, keeps them fixed while staff go on working.

        Raises NotFound unless the actor is a current, unrestricted guardian of the
        student (the same answer as for a student who does not exist), after recording
        the refusal as ``access.denied``; Forbidden for an actor who is not a guardian;
        AuditUnavailable.
        """
        guardian_id = require_guardian(self._audit, actor, "record of disclosures")
        with Session(self._engine) as session:
            view = self._guardian_view(session, actor, guardian_id, student_id)
        if isinstance(view, Decision):
            # SECURITY: every refusal is audited, and answers as a missing student does.
            detail = f"record of disclosures: {view.reason.value}"
            self._audit.record(denied(actor, detail, student_id=student_id))
            raise NotFound()
        own_grants, visible = view.own_grants, view.visible_documents

        def shown(event: RecordedEvent) -> bool:
            e = event.event
            if e.actor_role in _NOT_STAFF:
                return False
            if e.action in _SHARING:
                # Whom else the school shares with is not this guardian's business.
                return e.grant_id in own_grants
            # SECURITY: nothing of a document the guardian may not see now, not even
            # that staff opened it.
            return e.document_id is None or e.document_id in visible

        return DisclosureRecord(
            view.student,
            self._page(
                student_id,
                shown,
                page=page,
                per_page=per_page,
                with_detail=False,
                named=visible.__contains__,
                up_to_seq=up_to_seq,
            ),
        )

    def for_compliance(self, actor: Actor, student_id: uuid.UUID) -> DisclosureRecord:
        """Every disclosure of the student's records, to anyone, newest first (one page
        holding them all, for printing). Audited as an audit-trail query."""
        self._require_audit_reader(actor)
        with Session(self._engine) as session:
            student = session.get(Student, student_id)
            if student is None:
                raise NotFound("No such student.")
            ref = _ref(student)
        self._audit.record(
            event_for(
                actor, Action.AUDIT_QUERY, student_id=student_id, detail="record of disclosures"
            )
        )
        return DisclosureRecord(
            ref,
            self._page(
                student_id,
                lambda _: True,
                page=1,
                per_page=0,
                with_detail=True,
                named=lambda _: True,
            ),
        )

    def _page(
        self,
        student_id: uuid.UUID,
        shown: Callable[[RecordedEvent], bool],
        *,
        page: int,
        per_page: int,
        with_detail: bool,
        named: Callable[[str], bool],
        up_to_seq: int | None = None,
    ) -> Page[Disclosure]:
        """Matching events newest first; ``per_page`` 0 means all on one page, and a
        page past the last is the last page. A document is titled only if ``named``
        accepts its id (:data:`UNNAMED_DOCUMENT` otherwise).

        ``shown`` filters the student's events as they stream from the log, before
        they are counted and sliced, so totals and pages count only what is shown and
        no page but the last is short. (The log's filter cannot express who may see
        which document, so this is not SQL; the student's events are read once either
        way.)
        """
        matching: list[RecordedEvent] = []
        last: int | None = None
        for recorded in self._audit.events(
            EventFilter(student_id=str(student_id), up_to_seq=up_to_seq)
        ):
            last = recorded.sequence
            if (
                recorded.event.action in DISCLOSURE_ACTIONS
                and recorded.event.outcome is Outcome.ALLOWED
                and shown(recorded)
            ):
                matching.append(recorded)
        # Every later event is numbered higher: the last one read bounds this snapshot.
        bound = up_to_seq if up_to_seq is not None else last
        matching.reverse()
        total = len(matching)
        size = per_page or max(1, total)
        page = min(max(1, page), last_page(total, size))
        chosen = matching[(page - 1) * size : page * size]
        titles = self._titles(
            {d for r in chosen if (d := r.event.document_id) is not None and named(d)}
        )
        items = tuple(
            Disclosure(
                sequence=r.sequence,
                at=r.recorded_at,
                action=r.event.action,
                description=(_DESCRIPTIONS if with_detail else _FOR_GUARDIAN)[r.event.action],
                actor_email=r.event.actor_email,
                actor_role=r.event.actor_role,
                document_title=_title(r.event.document_id, titles, named),
                purpose=r.event.purpose,
                detail=r.event.detail if with_detail else None,
            )
            for r in chosen
        )
        return Page(items, page, size, total, bound)

    def _guardian_view(
        self, session: Session, actor: Actor, guardian_id: uuid.UUID, student_id: uuid.UUID
    ) -> _GuardianView | Decision:
        """What the guardian's record of disclosures needs, or the policy's refusal."""
        now = self._clock()
        link = guardian_link(session, guardian_id, student_id)
        decision = decide(
            actor, Permission.VIEW_STUDENT, Resource(student_id=student_id, link=link), now
        )
        if not decision.allowed:
            return decision
        student = session.get(Student, student_id)
        assert student is not None  # a guardianship points at a real student
        grants = session.scalars(
            select(Grant).where(Grant.guardian_id == guardian_id, Grant.student_id == student_id)
        ).all()
        visible: frozenset[str] = frozenset()
        if grants:
            facts = tuple(GrantFacts.of(g) for g in grants)
            documents = session.execute(
                select(Document.id, Document.category).where(Document.student_id == student_id)
            ).tuples()
            visible = frozenset(
                str(document_id)
                for document_id, category in documents
                if decide(
                    actor,
                    Permission.VIEW_DOCUMENT_METADATA,
                    Resource(student_id, document_id, category, link, facts),
                    now,
                ).allowed
            )
        return _GuardianView(_ref(student), frozenset(str(g.id) for g in grants), visible)

    def _titles(self, ids: set[str]) -> dict[str, str]:
        parsed = []
        for text in ids:
            try:
                parsed.append(uuid.UUID(text))
            except ValueError:
                continue
        if not parsed:
            return {}
        with Session(self._engine) as session:
            rows = session.execute(
                select(Document.id, Document.title).where(Document.id.in_(parsed))
            ).tuples()
            return {str(i): title for i, title in rows}

    def known_students(self, actor: Actor, student_ids: Iterable[str]) -> frozenset[str]:
        """Those of ``student_ids`` (as audit events hold them) that name a student who
        exists: an event may name an id that never was one (a refused probe). Raises
        Forbidden for an actor who may not read the audit trail."""
        self._require_audit_reader(actor)
        wanted: set[uuid.UUID] = set()
        for text in student_ids:
            try:
                wanted.add(uuid.UUID(text))
            except ValueError:
                continue  # not an id at all: no student
        if not wanted:
            return frozenset()
        with Session(self._engine) as session:
            found = session.scalars(select(Student.id).where(Student.id.in_(wanted)))
            return frozenset(str(student_id) for student_id in found)

    def _require_audit_reader(self, actor: Actor) -> None:
        require(self._audit, actor, Permission.READ_AUDIT, self._clock())


def _title(
    document_id: str | None, titles: dict[str, str], named: Callable[[str], bool]
) -> str | None:
    if document_id is None:
        return None
    return titles.get(document_id) if named(document_id) else UNNAMED_DOCUMENT


def _ref(student: Student) -> StudentRef:
    name = f"{student.given_name} {student.family_name}"
    return StudentRef(student.id, student.district_id, name)
