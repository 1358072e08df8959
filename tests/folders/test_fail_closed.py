"""Fail closed: when the audit event cannot be written, the action does not happen.

The failure is real: a database trigger refuses every new audit row, as a full disk, a
revoked privilege or a broken replica would.
"""

from __future__ import annotations

import io

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from audit.errors import AuditUnavailable
from folders.categories import Category
from folders.models import Document, DocumentVersion, Grant, GrantScope
from folders.runtime import Runtime
from tests.support import samples
from tests.support.faults import break_audit_inserts
from tests.support.people import Cast, upload_pdf


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_no_grant_without_its_event(runtime: Runtime, cast: Cast) -> None:
    break_audit_inserts(runtime.engine)
    with pytest.raises(AuditUnavailable):
        runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    assert count(runtime.engine, Grant) == 0


def test_no_revocation_without_its_event(runtime: Runtime, cast: Cast) -> None:
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )
    break_audit_inserts(runtime.engine)
    with pytest.raises(AuditUnavailable):
        runtime.grants.revoke(cast.registrar, grant.id, "mistake")
    with Session(runtime.engine) as session:
        assert session.get(Grant, grant.id).revoked_at is None  # type: ignore[union-attr]


def test_no_byte_served_without_its_event(runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    runtime.grants.grant(cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER)
    break_audit_inserts(runtime.engine)
    served: list[bytes] = []
    with pytest.raises(AuditUnavailable):
        opened = runtime.documents.open(cast.parent, document.id)
        served.extend(opened.chunks)
    assert served == []


def test_no_upload_without_its_event(runtime: Runtime, cast: Cast) -> None:
    break_audit_inserts(runtime.engine)
    with pytest.raises(AuditUnavailable):
        runtime.documents.upload(
            cast.registrar,
            cast.child.id,
            io.BytesIO(samples.make_pdf()),
            "a.pdf",
            category=Category.OTHER,
            title="Unaudited",
        )
    assert count(runtime.engine, Document) == 0
    assert count(runtime.engine, DocumentVersion) == 0
    assert list(runtime.store.list("versions/")) == []  # the object was removed again
