from __future__ import annotations

import hashlib
import io
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from audit.errors import AuditUnavailable
from audit.events import Action
from folders.categories import Category
from folders.errors import Forbidden, InvalidInput, NotFound
from folders.models import DocumentVersion, GrantScope
from folders.runtime import Runtime
from storage.errors import ContentRejected
from tests.support import samples
from tests.support.faults import break_audit_inserts
from tests.support.people import Cast, upload_pdf


def read(runtime: Runtime, cast: Cast, document_id: uuid.UUID, **kwargs: object) -> bytes:
    opened = runtime.documents.open(cast.parent, document_id, **kwargs)  # type: ignore[arg-type]
    return b"".join(opened.chunks)


def actions(runtime: Runtime) -> list[str]:
    return [e.event.action.value for e in reversed(runtime.audit_log.query(per_page=500).items)]


def test_upload_then_staff_open_with_purpose(runtime: Runtime, cast: Cast) -> None:
    info, data = upload_pdf(runtime, cast, cast.child)
    assert info.current.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.current.number, info.current.page_count) == (1, 2)
    opened = runtime.documents.open(
        cast.registrar, info.id, action=Action.DOCUMENT_VIEW, purpose="educational interest"
    )
    assert b"".join(opened.chunks) == data
    recorded = runtime.audit_log.query(per_page=1).items[0].event
    assert (recorded.action, recorded.purpose) == (Action.DOCUMENT_VIEW, "educational interest")
    assert recorded.document_id == str(info.id)


def test_staff_must_give_a_purpose(runtime: Runtime, cast: Cast) -> None:
    info, _ = upload_pdf(runtime, cast, cast.child)
    with pytest.raises(InvalidInput, match="purpose"):
        runtime.documents.open(cast.registrar, info.id)


def test_compliance_and_admin_never_read_contents(runtime: Runtime, cast: Cast) -> None:
    info, _ = upload_pdf(runtime, cast, cast.child)
    for actor in (cast.compliance, cast.admin):
        with pytest.raises(Forbidden):
            runtime.documents.open(actor, info.id, purpose="curious")
    assert actions(runtime)[-2:] == ["access.denied", "access.denied"]


def test_only_registrars_upload(runtime: Runtime, cast: Cast) -> None:
    for actor in (cast.parent, cast.compliance, cast.admin):
        with pytest.raises(Forbidden):
            runtime.documents.upload(
                actor,
                cast.child.id,
                io.BytesIO(samples.make_pdf()),
                "a.pdf",
                category=Category.OTHER,
                title="x",
            )


def test_rejected_upload_stores_nothing(runtime: Runtime, cast: Cast) -> None:
    before = actions(runtime)
    with pytest.raises(ContentRejected) as raised:
        runtime.documents.upload(
            cast.registrar,
            cast.child.id,
            io.BytesIO(samples.pdf_with_launch_action()),
            "a.pdf",
            category=Category.OTHER,
            title="Booby-trapped",
        )
    assert raised.value.reason == "pdf_launch"
    assert runtime.documents.list_folder(cast.registrar, cast.child.id) == []
    assert list(runtime.store.list("")) == []
    assert actions(runtime)[: len(before)] == before


class CommitReplyLost(Exception):
    """The database committed, but the answer never reached Satchel."""


@pytest.mark.parametrize("what", ["document", "version"])
def test_an_upload_whose_commit_reply_is_lost_keeps_its_object(
    runtime: Runtime, cast: Cast, what: str
) -> None:
    first, _ = upload_pdf(runtime, cast, cast.child)
    data = samples.make_pdf(text="Corrected")

    def lose_the_reply(_session: Session) -> None:
        raise CommitReplyLost

    event.listen(Session, "after_commit", lose_the_reply)
    try:
        with pytest.raises(CommitReplyLost):
            if what == "document":
                runtime.documents.upload(
                    cast.registrar,
                    cast.child.id,
                    io.BytesIO(data),
                    "b.pdf",
                    category=Category.OTHER,
                    title="Second",
                )
            else:
                runtime.documents.upload_version(
                    cast.registrar, first.id, io.BytesIO(data), "b.pdf"
                )
    finally:
        event.remove(Session, "after_commit", lose_the_reply)
    # The version committed, so its object must still be there and open.
    folder = runtime.documents.list_folder(cast.registrar, cast.child.id)
    document, version = max(
        ((d, v) for d in folder for v in d.versions), key=lambda pair: pair[1].uploaded_at
    )
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    opened = runtime.documents.open(
        cast.registrar, document.id, version_id=version.id, purpose="checking the correction"
    )
    assert b"".join(opened.chunks) == data


def test_a_failed_cleanup_does_not_hide_why_the_upload_failed(
    runtime: Runtime, cast: Cast, caplog: pytest.LogCaptureFixture
) -> None:
    break_audit_inserts(runtime.engine)
    versions = runtime.settings.objects_dir / "versions"
    moved = versions.with_name("versions.moved")

    def store_fails_too(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # While the upload's transaction runs (to fail at its audit event), the store's
        # directory fails as well: a symlink loop (ELOOP), which no permission bit can
        # stand in for when the tests run as root.
        if "INSERT INTO document_versions" in statement and not moved.exists():
            versions.rename(moved)
            versions.symlink_to(versions.name)

    event.listen(runtime.engine, "before_cursor_execute", store_fails_too)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="folders.documents"),
            pytest.raises(AuditUnavailable),
        ):
            runtime.documents.upload(
                cast.registrar,
                cast.child.id,
                io.BytesIO(samples.make_pdf()),
                "a.pdf",
                category=Category.OTHER,
                title="Unaudited",
            )
    finally:
        event.remove(runtime.engine, "before_cursor_execute", store_fails_too)
        if versions.is_symlink():
            versions.unlink()
            moved.rename(versions)
    assert moved.exists() is False
    assert "could not delete the object versions/" in caplog.text
    # The object stays as an orphan for `satchel fsck --repair`; no row names it.
    assert len(list(runtime.store.list("versions/"))) == 1
    with Session(runtime.engine) as session:
        assert session.scalars(select(DocumentVersion.id)).all() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"title": "  "}, "title is required"),
        ({"school_year": "2025-2027"}, "school year"),
        ({"category": "gossip"}, "Unknown category"),
    ],
)
def test_bad_metadata_is_refused_before_storing(
    runtime: Runtime, cast: Cast, kwargs: dict[str, str], message: str
) -> None:
    args = {"category": Category.OTHER, "title": "Fine", "school_year": None} | kwargs
    with pytest.raises(InvalidInput, match=message):
        runtime.documents.upload(
            cast.registrar, cast.child.id, io.BytesIO(samples.make_pdf()), "a.pdf", **args
        )  # type: ignore[arg-type]
    assert list(runtime.store.list("")) == []


def test_unknown_student(runtime: Runtime, cast: Cast) -> None:
    with pytest.raises(NotFound):
        runtime.documents.upload(
            cast.registrar,
            uuid.uuid4(),
            io.BytesIO(samples.make_pdf()),
            "a.pdf",
            category=Category.OTHER,
            title="x",
        )
    assert list(runtime.store.list("")) == []


def test_new_version_keeps_the_old_one_for_staff_only(runtime: Runtime, cast: Cast) -> None:
    info, old = upload_pdf(runtime, cast, cast.child, text="first draft")
    new = samples.make_pdf(pages=3, text="corrected")
    updated = runtime.documents.upload_version(cast.registrar, info.id, io.BytesIO(new), "v2.pdf")
    assert [v.number for v in updated.versions] == [2, 1]
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert read(runtime, cast, info.id) == new
    with pytest.raises(NotFound):
        read(runtime, cast, info.id, version_id=updated.versions[1].id)
    staff = runtime.documents.open(
        cast.registrar, info.id, version_id=updated.versions[1].id, purpose="correction review"
    )
    assert b"".join(staff.chunks) == old


def test_guardian_sees_only_what_is_shared(runtime: Runtime, cast: Cast) -> None:
    card, card_bytes = upload_pdf(runtime, cast, cast.child, "Report card", Category.REPORT_CARD)
    iep, _ = upload_pdf(runtime, cast, cast.child, "IEP", Category.IEP)
    upload_pdf(runtime, cast, cast.other_child, "Other family", Category.REPORT_CARD)
    assert runtime.documents.shared_with(cast.parent) == []
    with pytest.raises(NotFound):
        read(runtime, cast, card.id)
    runtime.grants.grant(
        cast.registrar,
        cast.parent.email,
        cast.child.id,
        GrantScope.CATEGORY,
        category=Category.REPORT_CARD,
    )
    shared = runtime.documents.shared_with(cast.parent)
    assert [s.document.id for s in shared] == [card.id]
    assert shared[0].student_name == "Lucia Lopez"
    assert read(runtime, cast, card.id) == card_bytes
    with pytest.raises(NotFound):
        read(runtime, cast, iep.id)
    assert actions(runtime)[-2:] == ["document.download", "access.denied"]


def test_folder_grant_covers_documents_added_later(runtime: Runtime, cast: Cast) -> None:
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    later, data = upload_pdf(runtime, cast, cast.child, "Added after the grant")
    assert [s.document.id for s in runtime.documents.shared_with(cast.parent)] == [later.id]
    assert read(runtime, cast, later.id) == data


def test_other_family_cannot_read_by_id(runtime: Runtime, cast: Cast) -> None:
    info, _ = upload_pdf(runtime, cast, cast.child)
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    with pytest.raises(NotFound):
        runtime.documents.open(cast.other_parent, info.id)
    with pytest.raises(NotFound):
        runtime.documents.open(cast.other_parent, uuid.uuid4())
    denied = runtime.audit_log.query(per_page=2).items
    assert {e.event.action for e in denied} == {Action.ACCESS_DENIED}


def test_each_refused_open_is_audited_with_its_reason(runtime: Runtime, cast: Cast) -> None:
    info, _ = upload_pdf(runtime, cast, cast.child)
    old = info.current.id
    corrected = io.BytesIO(samples.make_pdf(text="Corrected"))
    info = runtime.documents.upload_version(cast.registrar, info.id, corrected, "v2.pdf")
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    refused = [
        (cast.registrar, uuid.uuid4(), None, "no such document"),
        (cast.registrar, info.id, uuid.uuid4(), "no such version"),
        (cast.parent, info.id, old, "not the current version"),
        (cast.other_parent, info.id, None, "not_guardian_of_student"),
    ]
    for actor, document_id, version_id, _ in refused:
        with pytest.raises(NotFound):
            runtime.documents.open(
                actor, document_id, version_id=version_id, purpose="Records request"
            )
    events = reversed(runtime.audit_log.query(per_page=len(refused)).items)
    assert [(e.event.action, e.event.detail) for e in events] == [
        (Action.ACCESS_DENIED, f"document.download: {why}") for *_, why in refused
    ]


def test_revocation_and_restriction_take_effect_on_the_next_request(
    runtime: Runtime, cast: Cast
) -> None:
    info, data = upload_pdf(runtime, cast, cast.child)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    assert read(runtime, cast, info.id) == data
    runtime.grants.revoke(cast.registrar, grant.id, "Shared by mistake")
    with pytest.raises(NotFound):
        read(runtime, cast, info.id)
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert read(runtime, cast, info.id) == data
    runtime.students.restrict_guardian(
        cast.registrar, cast.child.id, cast.parent.email, "Court order"
    )
    with pytest.raises(NotFound):
        read(runtime, cast, info.id)
    assert runtime.documents.shared_with(cast.parent) == []


def test_a_guardian_open_weighs_only_their_own_grants_on_that_document(
    runtime: Runtime, cast: Cast
) -> None:
    shared, data = upload_pdf(runtime, cast, cast.child, "Shared one")
    other, _ = upload_pdf(runtime, cast, cast.child, "Not shared")
    runtime.students.link_guardian(cast.registrar, cast.child.id, cast.other_parent.email)
    runtime.grants.grant(cast.registrar, cast.other_parent.email, cast.child.id, GrantScope.FOLDER)
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.DOCUMENT, document_id=shared.id
    )

    def denied_reason(document_id: uuid.UUID) -> str | None:
        with pytest.raises(NotFound):
            read(runtime, cast, document_id)
        return runtime.audit_log.query(per_page=1).items[0].event.detail

    assert read(runtime, cast, shared.id) == data
    # Another guardian's folder grant on the same student shares nothing with this one.
    assert denied_reason(other.id) == "document.download: not_shared"
    runtime.grants.revoke(cast.registrar, grant.id, "Shared by mistake")
    assert denied_reason(shared.id) == "document.download: grant_revoked"


def test_a_spooled_upload_is_stored_with_the_spool_digest(runtime: Runtime, cast: Cast) -> None:
    data = samples.make_pdf(pages=3, text="Spooled before the upload")
    with runtime.vault.spool(io.BytesIO(data)) as spool:
        info = runtime.documents.upload(
            cast.registrar, cast.child.id, spool, "scan.pdf", category="iep", title="IEP 2026"
        )
    assert info.current.sha256 == spool.sha256 == hashlib.sha256(data).hexdigest()
    opened = runtime.documents.open(cast.registrar, info.id, purpose="records review")
    assert b"".join(opened.chunks) == data


def test_a_guardian_open_sees_the_current_version_whatever_the_number_of_grants(
    runtime: Runtime, cast: Cast
) -> None:
    # The guardian's open reads versions and grants in one joined statement, one row per
    # version and grant: repeats must neither duplicate nor drop either.
    info, _ = upload_pdf(runtime, cast, cast.child, "Report card", Category.REPORT_CARD)
    for n in (2, 3):
        current = samples.make_pdf(pages=1, text=f"version {n}")
        runtime.documents.upload_version(cast.registrar, info.id, io.BytesIO(current), f"v{n}.pdf")
    grants = [
        runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER),
        runtime.grants.grant(
            cast.registrar,
            cast.parent.email,
            cast.child.id,
            GrantScope.CATEGORY,
            category=Category.REPORT_CARD,
        ),
        runtime.grants.grant(
            cast.registrar,
            cast.parent.email,
            cast.child.id,
            GrantScope.DOCUMENT,
            document_id=info.id,
        ),
    ]
    opened = runtime.documents.open(cast.parent, info.id)
    assert b"".join(opened.chunks) == current
    assert opened.version.number == 3
    assert [v.number for v in opened.document.versions] == [3, 2, 1]
    for grant in grants[:2]:
        runtime.grants.revoke(cast.registrar, grant.id, "Narrowed")
    assert read(runtime, cast, info.id) == current  # the document grant still covers it
    runtime.grants.revoke(cast.registrar, grants[2].id, "Ended")
    with pytest.raises(NotFound):
        read(runtime, cast, info.id)


def test_a_folder_page_holds_its_slice_in_folder_order(runtime: Runtime, cast: Cast) -> None:
    for n in range(3):
        upload_pdf(runtime, cast, cast.child, f"Card {n}", Category.REPORT_CARD)
    upload_pdf(runtime, cast, cast.child, "Screening", Category.HEALTH)
    whole = runtime.documents.list_folder(cast.registrar, cast.child.id)
    documents = runtime.documents
    # Categories in the vocabulary's order, as the pages show them; newest first in one.
    assert [d.title for d in whole] == ["Card 2", "Card 1", "Card 0", "Screening"]

    pages = [
        documents.folder_page(cast.registrar, cast.child.id, page=n, per_page=3) for n in (1, 2)
    ]
    assert [p.total for p in pages] == [4, 4] and [p.pages for p in pages] == [2, 2]
    assert [d.id for p in pages for d in p.items] == [d.id for d in whole]
    past = documents.folder_page(cast.registrar, cast.child.id, page=9, per_page=3)
    assert past.page == 2 and past.items == pages[1].items
    health = documents.folder_page(cast.registrar, cast.child.id, category=Category.HEALTH)
    assert [d.title for d in health.items] == ["Screening"] and health.total == 1
    everything = documents.folder_page(cast.registrar, cast.child.id, per_page=None)
    assert everything.pages == 1 and len(everything.items) == 4
    with pytest.raises(Forbidden):
        documents.folder_page(cast.parent, cast.child.id)
    with pytest.raises(NotFound):
        documents.folder_page(cast.registrar, uuid.uuid4())
