"""Students, schools and guardians: who the folders belong to and who may ask to see them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Engine, String, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog, Page, last_page
from folders.actor import Actor
from folders.auditing import denied, event_for, require, require_guardian
from folders.errors import Conflict, InvalidInput, NotFound
from folders.grants import GUARDIANSHIP_ENDED, revoke_guardian_grants
from folders.links import guardian_link
from folders.models import Guardianship, Relationship, Role, School, Student, StudentStatus, User
from folders.policy import Decision, Permission, Resource, decide
from folders.text import clean_text

# What a staff search matches each term in: names and ids, lower-cased, space-separated
# (terms never hold a space, so none matches across two fields). On PostgreSQL migration
# 0005 indexes exactly this expression's trigrams; the separators are SQL literals, not
# bound parameters, so a prepared statement's generic plan still matches the index.
_SPACE = literal_column("' '", String)
SEARCH_TEXT = func.lower(
    Student.given_name
    + _SPACE
    + Student.family_name
    + _SPACE
    + Student.district_id
    + _SPACE
    + func.coalesce(Student.state_id, literal_column("''", String))
)


@dataclass(frozen=True)
class StudentInfo:
    id: uuid.UUID
    district_id: str
    state_id: str | None
    given_name: str
    middle_name: str | None
    family_name: str
    birth_date: date | None
    grade: str | None
    school_name: str | None
    status: StudentStatus

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


@dataclass(frozen=True)
class GuardianInfo:
    guardian_id: uuid.UUID
    email: str
    display_name: str
    relationship: Relationship
    restricted: bool
    restriction_reason: str | None
    ended_at: datetime | None
    account_active: bool  # False: the account is disabled and cannot log in


class Students:
    """Use cases on students and their guardians. Registrars manage; guardians see their own."""

    def __init__(self, engine: Engine, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    # Schools and students ---------------------------------------------------------------

    def add_school(self, actor: Actor, code: str, name: str) -> uuid.UUID:
        """Create a school (or return the existing one with this code)."""
        self._require(actor, Permission.MANAGE_FOLDER)
        code_ = clean_text(code, "school code", max_length=64)
        name_ = clean_text(name, "school name", max_length=200)
        with Session(self._engine) as session, session.begin():
            existing = session.scalar(select(School).where(School.code == code_))
            if existing is not None:
                return existing.id
            school = School(code=code_, name=name_, created_at=self._clock())
            session.add(school)
            session.flush()
            return school.id

    def add_student(
        self,
        actor: Actor,
        district_id: str,
        given_name: str,
        family_name: str,
        *,
        middle_name: str | None = None,
        state_id: str | None = None,
        birth_date: date | None = None,
        grade: str | None = None,
        school_code: str | None = None,
    ) -> StudentInfo:
        """Create a student; Conflict if the district or state id is taken, InvalidInput
        for a missing or too long name or id, or a birth date after today."""
        self._require(actor, Permission.MANAGE_FOLDER)
        now = self._clock()
        if birth_date is not None and birth_date > now.date():
            raise InvalidInput(f"The birth date {birth_date.isoformat()} is in the future.")
        student = Student(
            district_id=clean_text(district_id, "district id", max_length=64),
            state_id=clean_text(state_id or "", "state id", max_length=64, required=False),
            given_name=clean_text(given_name, "given name", max_length=100),
            middle_name=clean_text(
                middle_name or "", "middle name", max_length=100, required=False
            ),
            family_name=clean_text(family_name, "family name", max_length=100),
            birth_date=birth_date,
            grade=clean_text(grade or "", "grade", max_length=16, required=False),
            status=StudentStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                if school_code:
                    school = session.scalar(select(School).where(School.code == school_code))
                    if school is None:
                        raise NotFound(f"No school with the code {school_code}.")
                    student.school_id = school.id
                session.add(student)
                session.flush()
                self._audit.append(
                    session, event_for(actor, Action.STUDENT_CREATE, student_id=student.id)
                )
                return self._student_info(session, student)
        except IntegrityError:
            raise Conflict(
                f"A student with the district id {student.district_id} already exists."
            ) from None

    def get_student(self, actor: Actor, student_id: uuid.UUID) -> StudentInfo:
        """A student for staff, or for a current, unrestricted guardian of that student.

        Raises NotFound otherwise, the same answer as for a student who does not exist;
        a refusal by the policy is first recorded as ``access.denied`` (AuditUnavailable
        if it cannot be).
        """
        with Session(self._engine) as session:
            decision = self._student_view(session, actor, student_id)
            student = session.get(Student, student_id) if decision.allowed else None
            info = self._student_info(session, student) if student is not None else None
        if not decision.allowed:
            # SECURITY: "not yours" is indistinguishable from "does not exist", and audited.
            detail = f"{Permission.VIEW_STUDENT.value}: {decision.reason.value}"
            self._audit.record(denied(actor, detail, student_id=student_id))
            raise NotFound()
        if info is None:
            raise NotFound()
        return info

    def get_by_district_id(self, actor: Actor, district_id: str) -> StudentInfo:
        """The student with this district id (staff only); NotFound if none."""
        self._require(actor, Permission.LIST_FOLDER)
        with Session(self._engine) as session:
            student = student_by_district_id(session, district_id)
            if student is None:
                raise NotFound(f"No student with the district id {district_id.strip()}.")
            return self._student_info(session, student)

    def find_students(
        self, actor: Actor, query: str, *, page: int = 1, per_page: int = 25
    ) -> Page[StudentInfo]:
        """Staff search by name or district/state id, case-insensitive, paginated (a page
        past the last is the last page)."""
        self._require(actor, Permission.LIST_FOLDER)
        page, per_page = max(1, page), min(max(1, per_page), 100)
        terms = query.split()
        condition = [
            SEARCH_TEXT.like(f"%{escape_like(term.lower())}%", escape="\\") for term in terms[:5]
        ]
        with Session(self._engine) as session:
            base = select(Student).where(*condition)
            total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
            page = min(page, last_page(total, per_page))
            rows = session.scalars(
                base.order_by(Student.family_name, Student.given_name, Student.district_id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
            items = tuple(self._student_info(session, s) for s in rows)
        return Page(items, page, per_page, total)

    # Guardians --------------------------------------------------------------------------

    def link_guardian(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        guardian_email: str,
        relationship: Relationship = Relationship.PARENT,
    ) -> GuardianInfo:
        """Link a guardian account to a student (re-opening an ended link).

        A re-opened link starts with no grant in force, so no old sharing comes back to
        life: any grant its guardian still holds on the student is revoked first, each
        with its event (such grants survive on links the roster import ended, and on
        links ended before :meth:`unlink_guardian` revoked them).
        Raises Forbidden, NotFound, and what :func:`folders.grants.revoke_grant` raises.
        """
        self._require(actor, Permission.MANAGE_FOLDER)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            student = self._student(session, student_id)
            guardian = self._guardian_user(session, guardian_email)
            link = session.scalar(
                select(Guardianship).where(
                    Guardianship.guardian_id == guardian.id,
                    Guardianship.student_id == student.id,
                )
            )
            if link is None:
                link = Guardianship(
                    guardian_id=guardian.id,
                    student_id=student.id,
                    relationship=relationship,
                    restricted=False,
                    created_at=self._clock(),
                )
                session.add(link)
            else:
                if link.ended_at is not None:
                    self._revoke_grants(session, actor, guardian.id, student.id)
                link.relationship = relationship
                link.ended_at = None
            session.flush()
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.GUARDIAN_LINK,
                    student_id=student.id,
                    detail=f"{guardian.email} ({relationship.value})",
                ),
            )
            return _guardian_info(link, guardian)

    def unlink_guardian(self, actor: Actor, student_id: uuid.UUID, guardian_email: str) -> bool:
        """End a guardian's link (history is kept) and, in the same transaction, revoke
        their grants on the student still in force, each with a ``grant.revoke`` event
        giving the reason "guardianship ended": linking them again gives back nothing.

        Returns False, changing and recording nothing, when the link has ended already.
        Raises Forbidden, NotFound, and what :func:`folders.grants.revoke_grant` raises
        (nothing is changed then).
        """
        self._require(actor, Permission.MANAGE_FOLDER)
        with Session(self._engine) as session, session.begin():
            link, guardian = self._link(session, student_id, guardian_email)
            if link.ended_at is not None:
                return False
            link.ended_at = self._clock()
            self._audit.append(
                session,
                event_for(
                    actor, Action.GUARDIAN_UNLINK, student_id=student_id, detail=guardian.email
                ),
            )
            self._revoke_grants(session, actor, guardian.id, student_id)
        return True

    def restrict_guardian(
        self,
        actor: Actor,
        student_id: uuid.UUID,
        guardian_email: str,
        reason: str,
        *,
        order_document_id: uuid.UUID | None = None,
    ) -> GuardianInfo:
        """Restrict a guardian (e.g. by court order): from now on they see nothing."""
        self._require(actor, Permission.MANAGE_FOLDER)
        why = clean_text(reason, "restriction reason", max_length=1000)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            link, guardian = self._link(session, student_id, guardian_email)
            link.restricted = True
            link.restriction_reason = why
            link.restriction_document_id = order_document_id
            link.restricted_by = actor.user_id
            link.restricted_at = self._clock()
            self._audit.append(
                session,
                event_for(
                    actor,
                    Action.GUARDIAN_RESTRICT,
                    student_id=student_id,
                    document_id=order_document_id,
                    detail=f"{guardian.email}: {why}",
                ),
            )
            return _guardian_info(link, guardian)

    def list_guardians(self, actor: Actor, student_id: uuid.UUID) -> list[GuardianInfo]:
        """Every guardian ever linked to the student (staff)."""
        self._require(actor, Permission.LIST_FOLDER)
        with Session(self._engine) as session:
            self._student(session, student_id)
            rows = session.execute(
                select(Guardianship, User)
                .join(User, User.id == Guardianship.guardian_id)
                .where(Guardianship.student_id == student_id)
                .order_by(User.display_name)
            ).all()
            return [_guardian_info(link, user) for link, user in rows]

    def my_students(self, actor: Actor) -> list[StudentInfo]:
        """A guardian's students: current, unrestricted links only."""
        guardian_id = require_guardian(self._audit, actor, "my students")
        with Session(self._engine) as session:
            students = session.scalars(
                select(Student)
                .join(Guardianship, Guardianship.student_id == Student.id)
                .where(
                    Guardianship.guardian_id == guardian_id,
                    Guardianship.ended_at.is_(None),
                    Guardianship.restricted.is_(False),
                )
                .order_by(Student.given_name, Student.family_name)
            ).all()
            return [self._student_info(session, s) for s in students]

    # Helpers ----------------------------------------------------------------------------

    def _require(self, actor: Actor, permission: Permission) -> None:
        require(self._audit, actor, permission, self._clock())

    def _student_view(self, session: Session, actor: Actor, student_id: uuid.UUID) -> Decision:
        link = None
        if actor.role is Role.GUARDIAN and actor.user_id is not None:
            link = guardian_link(session, actor.user_id, student_id)
        resource = Resource(student_id=student_id, link=link)
        return decide(actor, Permission.VIEW_STUDENT, resource, self._clock())

    def _revoke_grants(
        self, session: Session, actor: Actor, guardian_id: uuid.UUID, student_id: uuid.UUID
    ) -> None:
        """Revoke the guardian's grants on the student still in force, in ``session``."""
        revoke_guardian_grants(
            session,
            self._audit,
            actor,
            guardian_id,
            student_id,
            GUARDIANSHIP_ENDED,
            self._clock(),
        )

    @staticmethod
    def _student(session: Session, student_id: uuid.UUID) -> Student:
        student = session.get(Student, student_id)
        if student is None:
            raise NotFound("No such student.")
        return student

    @staticmethod
    def _guardian_user(session: Session, email: str) -> User:
        user = session.scalar(select(User).where(User.email == email.strip().lower()))
        if user is None or user.role is not Role.GUARDIAN:
            raise NotFound(f"No guardian account with the email {email.strip().lower()}.")
        return user

    def _link(
        self, session: Session, student_id: uuid.UUID, email: str
    ) -> tuple[Guardianship, User]:
        guardian = self._guardian_user(session, email)
        link = session.scalar(
            select(Guardianship)
            .where(Guardianship.guardian_id == guardian.id, Guardianship.student_id == student_id)
            .with_for_update()
        )
        if link is None:
            raise NotFound(f"{guardian.email} is not a guardian of this student.")
        return link, guardian

    @staticmethod
    def _student_info(session: Session, student: Student) -> StudentInfo:
        school = session.get(School, student.school_id) if student.school_id else None
        return StudentInfo(
            id=student.id,
            district_id=student.district_id,
            state_id=student.state_id,
            given_name=student.given_name,
            middle_name=student.middle_name,
            family_name=student.family_name,
            birth_date=student.birth_date,
            grade=student.grade,
            school_name=school.name if school else None,
            status=student.status,
        )


def _guardian_info(link: Guardianship, user: User) -> GuardianInfo:
    return GuardianInfo(
        guardian_id=user.id,
        email=user.email,
        display_name=user.display_name,
        relationship=link.relationship,
        restricted=link.restricted,
        restriction_reason=link.restriction_reason,
        ended_at=link.ended_at,
        account_active=user.active,
    )


def student_by_district_id(session: Session, district_id: str) -> Student | None:
    """The student whose district id is ``district_id`` (surrounding spaces ignored); in
    another case ("d-1001" for "D-1001") when no id matches exactly and exactly one
    matches in any case. None otherwise."""
    wanted = district_id.strip()
    exact = session.scalar(select(Student).where(Student.district_id == wanted))
    if exact is not None:
        return exact
    folded = session.scalars(
        select(Student).where(func.lower(Student.district_id) == wanted.lower()).limit(2)
    ).all()
    return folded[0] if len(folded) == 1 else None


def escape_like(term: str) -> str:
    """``term`` with LIKE's wildcards (``%``, ``_``) and backslashes escaped by a backslash."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
