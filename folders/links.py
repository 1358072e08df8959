"""Reading a guardian's links to students, as the access policy takes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from folders.models import Guardianship
from folders.policy import GuardianLink


def guardian_links(
    session: Session, guardian_id: uuid.UUID, student_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, GuardianLink]:
    """The guardian's stored links to each of ``student_ids`` that has one, by student."""
    rows = session.scalars(
        select(Guardianship).where(
            Guardianship.guardian_id == guardian_id,
            Guardianship.student_id.in_(list(student_ids)),
        )
    )
    return {row.student_id: GuardianLink.of(row) for row in rows}


def guardian_link(
    session: Session, guardian_id: uuid.UUID, student_id: uuid.UUID
) -> GuardianLink | None:
    """The guardian's stored link to the student, ended or not; None if never linked."""
    return guardian_links(session, guardian_id, (student_id,)).get(student_id)
