"""Students and guardianships: who may see a student, and what ending a link does."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from audit.events import Action, Outcome
from folders.actor import Actor
from folders.errors import Forbidden, InvalidInput, NotFound
from folders.grants import GUARDIANSHIP_ENDED, GrantStatus
from folders.models import GrantScope, Guardianship
from folders.runtime import Runtime
from tests.support.people import Cast, upload_pdf


def _denials(runtime: Runtime) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (e.event.student_id, e.event.actor_email, e.event.detail)
        for e in runtime.audit_log.query(action=Action.ACCESS_DENIED).items
        if e.event.outcome is Outcome.DENIED
    ]


def test_a_refused_student_is_audited_and_answers_as_a_missing_one(
    runtime: Runtime, cast: Cast
) -> None:
    assert runtime.students.get_student(cast.parent, cast.child.id).id == cast.child.id
    assert runtime.students.get_student(cast.registrar, cast.child.id).id == cast.child.id
    missing = uuid.uuid4()
    with pytest.raises(NotFound):
        runtime.students.get_student(cast.registrar, missing)  # not a refusal: no such row
    assert _denials(runtime) == []

    with pytest.raises(NotFound):
        runtime.students.get_student(cast.parent, cast.other_child.id)
    with pytest.raises(NotFound):
        runtime.students.get_student(cast.parent, missing)
    with pytest.raises(NotFound):
        runtime.students.get_student(cast.compliance, cast.child.id)
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order"
    )
    with pytest.raises(NotFound):
        runtime.students.get_student(cast.parent, cast.child.id)

    assert _denials(runtime) == [
        (str(cast.child.id), cast.parent.email, "view_student: guardian_restricted"),
        (str(cast.child.id), cast.compliance.email, "view_student: role_not_permitted"),
        (str(missing), cast.parent.email, "view_student: not_guardian_of_student"),
        (str(cast.other_child.id), cast.parent.email, "view_student: not_guardian_of_student"),
    ]


def test_ending_a_guardianship_revokes_their_grants_and_relinking_gives_back_nothing(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    folder = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    single = runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.DOCUMENT,
        document_id=document.id,
    )
    # Another guardian of the same child keeps theirs.
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    kept = runtime.grants.grant(
        cast.registrar, cast.other_parent.email, cast.child.id, GrantScope.FOLDER
    )
    assert runtime.documents.open(cast.parent, document.id).document.id == document.id

    runtime.students.unlink_guardian(cast.registrar, cast.child.id, cast.parent.email)

    listed = {
        g.id: g
        for g in runtime.grants.list_for_student(
            cast.registrar, cast.child.id, include_inactive=True
        )
    }
    for grant in (folder, single):
        ended = listed[grant.id]
        assert (ended.status, ended.revoke_reason, ended.revoked_by_email) == (
            GrantStatus.REVOKED,
            GUARDIANSHIP_ENDED,
            cast.registrar.email,
        )
    assert listed[kept.id].status is GrantStatus.ACTIVE
    # The unlink and its revocations, one after the other (one transaction).
    unlink, *revokes = [e.event for e in runtime.audit_log.query(per_page=3).items][::-1]
    assert (unlink.action, unlink.detail) == (Action.GUARDIAN_UNLINK, cast.parent.email)
    assert {e.grant_id for e in revokes} == {str(folder.id), str(single.id)}
    assert all(
        (e.action, e.detail, e.student_id, e.actor_email)
        == (Action.GRANT_REVOKE, GUARDIANSHIP_ENDED, str(cast.child.id), cast.registrar.email)
        for e in revokes
    )

    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.parent.email)
    in_force = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert [g.id for g in in_force] == [kept.id]
    with pytest.raises(NotFound):
        runtime.documents.open(cast.parent, document.id)
    assert runtime.documents.shared_with(cast.parent) == []
    assert runtime.audit_log.query(action=Action.GRANT_REVOKE).total == 2  # none at relinking


def test_relinking_revokes_grants_left_on_a_link_ended_without_revoking_them(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    # A link ended as the roster import ends one (or as links were ended before
    # unlinking revoked grants): the grant is still in force.
    assert cast.parent.user_id is not None
    with Session(runtime.engine) as session, session.begin():
        session.execute(
            update(Guardianship)
            .where(
                Guardianship.guardian_id == cast.parent.user_id,
                Guardianship.student_id == cast.child.id,
            )
            .values(ended_at=runtime.clock())
        )
    [unlinked] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert (unlinked.id, unlinked.status) == (grant.id, GrantStatus.GUARDIAN_UNLINKED)

    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.parent.email)

    [revoked] = runtime.grants.list_for_student(
        cast.registrar, cast.child.id, include_inactive=True
    )
    assert (revoked.status, revoked.revoke_reason) == (GrantStatus.REVOKED, GUARDIANSHIP_ENDED)
    link, revoke = [e.event for e in runtime.audit_log.query(per_page=2).items]
    assert (link.action, revoke.action, revoke.grant_id) == (
        Action.GUARDIAN_LINK,
        Action.GRANT_REVOKE,
        str(grant.id),
    )
    with pytest.raises(NotFound):
        runtime.documents.open(cast.parent, document.id)


def test_ending_a_guardianship_is_all_or_nothing(runtime: Runtime, cast: Cast) -> None:
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    # The operator has no account to name as the one who revoked: nothing happens.
    with pytest.raises(Forbidden):
        runtime.students.unlink_guardian(Actor.operator(), cast.child.id, cast.parent.email)
    [link] = runtime.students.list_guardians(cast.registrar, cast.child.id)
    assert link.ended_at is None
    [grant] = runtime.grants.list_for_student(cast.registrar, cast.child.id)
    assert grant.status is GrantStatus.ACTIVE
    assert runtime.audit_log.query(action=Action.GUARDIAN_UNLINK).total == 0
    assert runtime.audit_log.query(action=Action.GRANT_REVOKE).total == 0


def test_a_district_id_is_found_in_any_case_unless_that_is_ambiguous(
    runtime: Runtime, cast: Cast
) -> None:
    students, registrar = runtime.students, cast.registrar
    upper = students.add_student(registrar, "D-1001", "Ana", "Diaz")
    assert students.get_by_district_id(registrar, " d-1001 ").id == upper.id
    assert runtime.disclosures.find_student(cast.compliance, "d-1001").id == upper.id

    lower = students.add_student(registrar, "d-1001", "Ben", "Diaz")
    assert students.get_by_district_id(registrar, "D-1001").id == upper.id  # exact first
    assert students.get_by_district_id(registrar, "d-1001").id == lower.id
    students.add_student(registrar, "Ab-7", "Cam", "Diaz")
    students.add_student(registrar, "aB-7", "Dee", "Diaz")
    with pytest.raises(NotFound, match=r"No student with the district id ab-7\."):
        students.get_by_district_id(registrar, "ab-7")  # two in another case: neither


def test_a_birth_date_after_today_is_refused(runtime: Runtime, cast: Cast) -> None:
    tomorrow = (runtime.clock() + timedelta(days=1)).date()
    with pytest.raises(InvalidInput, match=f"The birth date {tomorrow} is in the future"):
        runtime.students.add_student(cast.registrar, "D-3", "Ana", "Diaz", birth_date=tomorrow)
    today = runtime.clock().date()
    added = runtime.students.add_student(cast.registrar, "D-3", "Ana", "Diaz", birth_date=today)
    assert added.district_id == "D-3"
