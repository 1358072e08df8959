"""The record of disclosures a guardian sees: only what the policy lets them see now."""

from __future__ import annotations

import uuid

import pytest

from audit.events import Action, Outcome
from folders.categories import Category
from folders.disclosures import DEFAULT_PURPOSE, UNNAMED_DOCUMENT, DisclosureRecord
from folders.errors import NotFound
from folders.models import GrantScope
from folders.runtime import Runtime
from tests.support.people import Cast, upload_pdf


def _rows(record: DisclosureRecord) -> list[tuple[str, str | None, str | None]]:
    return [(e.description, e.document_title, e.purpose) for e in record.entries.items]


def test_staff_use_of_a_document_not_shared_with_the_guardian_is_left_out(
    runtime: Runtime, cast: Cast
) -> None:
    report, _ = upload_pdf(runtime, cast, cast.child, "Spring report card")
    behaviour, _ = upload_pdf(
        runtime, cast, cast.child, "Behaviour incident 14 March", Category.BEHAVIOR
    )
    # A second guardian of the child, linked but given nothing.
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.REPORT_CARD,
    )
    runtime.documents.open(cast.registrar, report.id, purpose=DEFAULT_PURPOSE)
    runtime.documents.open(
        cast.registrar, behaviour.id, action=Action.DOCUMENT_VIEW, purpose="Correction or review"
    )

    record = runtime.disclosures.for_guardian(cast.parent, cast.child.id)
    assert _rows(record) == [
        ("Downloaded a document", "Spring report card", DEFAULT_PURPOSE),
        ("Shared records with you", None, None),
    ]
    assert record.entries.total == 2
    assert "Behaviour incident" not in repr(record) and "Correction" not in repr(record)

    nothing_shared = runtime.disclosures.for_guardian(cast.other_parent, cast.child.id)
    assert nothing_shared.entries.items == () and nothing_shared.entries.total == 0
    # Compliance still sees every disclosure, with its title.
    everything = runtime.disclosures.for_compliance(cast.compliance, cast.child.id)
    titles = {e.document_title for e in everything.entries.items}
    assert {"Spring report card", "Behaviour incident 14 March"} <= titles


def test_the_history_follows_the_guardians_access_at_each_request(
    runtime: Runtime, cast: Cast
) -> None:
    report, _ = upload_pdf(runtime, cast, cast.child, "Spring report card")
    grant = runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.REPORT_CARD,
    )
    runtime.documents.open(cast.registrar, report.id, purpose=DEFAULT_PURPOSE)
    runtime.grants.revoke(cast.registrar, grant.id, "Records request closed")

    revoked = runtime.disclosures.for_guardian(cast.parent, cast.child.id)
    assert _rows(revoked) == [
        ("Ended your access to shared records", None, None),
        ("Shared records with you", None, None),
    ]

    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    shared_again = runtime.disclosures.for_guardian(cast.parent, cast.child.id)
    assert ("Downloaded a document", "Spring report card", DEFAULT_PURPOSE) in _rows(shared_again)


def test_the_guardians_own_sharing_names_its_document_only_while_they_may_see_it(
    runtime: Runtime, cast: Cast
) -> None:
    plan, _ = upload_pdf(runtime, cast, cast.child, "IEP 2025-2026", Category.IEP)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.DOCUMENT, document_id=plan.id
    )
    shared = runtime.disclosures.for_guardian(cast.parent, cast.child.id)
    assert _rows(shared) == [("Shared records with you", "IEP 2025-2026", None)]

    runtime.grants.revoke(cast.registrar, grant.id, "Sent by mistake")
    record = runtime.disclosures.for_guardian(cast.parent, cast.child.id)
    assert _rows(record) == [
        ("Ended your access to shared records", UNNAMED_DOCUMENT, None),
        ("Shared records with you", UNNAMED_DOCUMENT, None),
    ]
    assert "IEP 2025-2026" not in repr(record)


def test_pages_and_totals_count_only_what_the_guardian_is_shown(
    runtime: Runtime, cast: Cast
) -> None:
    shared, _ = upload_pdf(runtime, cast, cast.child, "Report card")
    hidden, _ = upload_pdf(runtime, cast, cast.child, "Health plan", Category.HEALTH)
    runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.REPORT_CARD,
    )
    for _ in range(5):  # hidden events on both sides of every shown one
        runtime.documents.open(cast.registrar, hidden.id, purpose=DEFAULT_PURPOSE)
        runtime.documents.open(cast.registrar, shared.id, purpose=DEFAULT_PURPOSE)
        runtime.documents.open(cast.registrar, hidden.id, purpose=DEFAULT_PURPOSE)

    pages = [
        runtime.disclosures.for_guardian(cast.parent, cast.child.id, page=n, per_page=2).entries
        for n in (1, 2, 3)
    ]
    assert [(p.page, p.total, p.pages, len(p.items)) for p in pages] == [
        (1, 6, 3, 2),
        (2, 6, 3, 2),
        (3, 6, 3, 2),
    ]
    titles = [e.document_title for p in pages for e in p.items]
    assert titles == ["Report card"] * 5 + [None]  # the downloads, then the grant
    assert len({e.sequence for p in pages for e in p.items}) == 6  # no entry twice


def test_the_pages_of_a_history_stay_put_while_staff_go_on_working(
    runtime: Runtime, cast: Cast
) -> None:
    shared, _ = upload_pdf(runtime, cast, cast.child, "Report card")
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    for _ in range(3):
        runtime.documents.open(cast.registrar, shared.id, purpose=DEFAULT_PURPOSE)
    history = runtime.disclosures.for_guardian
    first = history(cast.parent, cast.child.id, page=1, per_page=2).entries
    assert (first.total, first.up_to_seq) == (4, max(e.sequence for e in first.items))

    runtime.documents.open(cast.registrar, shared.id, purpose=DEFAULT_PURPOSE)  # meanwhile
    second = history(
        cast.parent, cast.child.id, page=2, per_page=2, up_to_seq=first.up_to_seq
    ).entries
    assert (second.total, second.up_to_seq) == (4, first.up_to_seq)
    assert {e.sequence for e in first.items}.isdisjoint(e.sequence for e in second.items)
    assert len([*first.items, *second.items]) == 4
    assert history(cast.parent, cast.child.id, per_page=2).entries.total == 5  # afresh


def test_a_refused_history_is_audited_and_answers_as_a_missing_student(
    runtime: Runtime, cast: Cast
) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound):
        runtime.disclosures.for_guardian(cast.parent, cast.other_child.id)
    with pytest.raises(NotFound):
        runtime.disclosures.for_guardian(cast.parent, missing)
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order"
    )
    with pytest.raises(NotFound):
        runtime.disclosures.for_guardian(cast.parent, cast.child.id)

    denied = [e.event for e in runtime.audit_log.query(action=Action.ACCESS_DENIED).items]
    assert [(e.student_id, e.detail) for e in denied] == [
        (str(cast.child.id), "record of disclosures: guardian_restricted"),
        (str(missing), "record of disclosures: not_guardian_of_student"),
        (str(cast.other_child.id), "record of disclosures: not_guardian_of_student"),
    ]
    assert all(
        (e.outcome, e.actor_email, e.actor_role) == (Outcome.DENIED, cast.parent.email, "guardian")
        for e in denied
    )
