"""Key rotation rewraps data keys in SQL only; crypto-shredding destroys content for good."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from folders.actor import Actor
from folders.errors import InvalidInput, NotFound
from folders.models import DocumentVersion
from folders.runtime import Runtime
from storage.errors import KeyringError
from tests.support.people import Cast, upload_pdf

OPERATOR = Actor.operator()


def etags(runtime: Runtime) -> dict[str, str | None]:
    """The ETag of every stored document version (audit checkpoints left out)."""
    return {info.key: info.etag for info in runtime.store.list("versions/")}


def test_rotation_resumes_after_an_interruption(runtime: Runtime, cast: Cast) -> None:
    for i in range(5):
        upload_pdf(runtime, cast, cast.child, title=f"Doc {i}")
    runtime.keyring.rotate(now=runtime.clock())  # as if `keys rotate` died before rewrapping
    assert runtime.keys.status(OPERATOR)[0].data_keys == 5
    with pytest.raises(InvalidInput, match="still wrapped"):
        runtime.keys.retire_below(OPERATOR, 2)
    result = runtime.keys.rotate(OPERATOR, resume=True, batch_size=2)
    assert (result.active_version, result.rewrapped, result.remaining) == (2, 5, 0)
    runtime.keys.retire_below(OPERATOR, 2)
    with Session(runtime.engine) as session:
        assert set(session.scalars(select(DocumentVersion.key_version))) == {2}


def test_a_retired_version_can_no_longer_decrypt(runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    with Session(runtime.engine) as session:
        row = session.scalars(select(DocumentVersion)).one()
        old = (row.wrapped_dek, row.key_id, row.key_version)
    runtime.keys.rotate(OPERATOR)
    runtime.keys.retire_below(OPERATOR, 2)
    with Session(runtime.engine) as session, session.begin():
        row = session.scalars(select(DocumentVersion)).one()
        row.wrapped_dek, row.key_id, row.key_version = old  # a restored stale backup
    with pytest.raises(KeyringError, match="retired"):
        runtime.documents.open(cast.registrar, document.id, purpose="check")


def test_shredding_a_version_makes_it_unrecoverable(runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    version = document.current
    with Session(runtime.engine) as session:
        object_key = session.get(DocumentVersion, version.id).object_key  # type: ignore[union-attr]
    runtime.keys.shred_version(OPERATOR, version.id, "Retention period ended")
    with Session(runtime.engine) as session:
        assert session.get(DocumentVersion, version.id).wrapped_dek is None  # type: ignore[union-attr]
    assert object_key not in etags(runtime)
    with pytest.raises(NotFound, match="destroyed"):
        runtime.documents.open(cast.registrar, document.id, purpose="check")
    assert runtime.audit_log.query(per_page=1).items[0].event.action.value == "key.shred"
    with pytest.raises(NotFound):
        runtime.keys.shred_version(OPERATOR, version.id, "again")


def test_only_admins_and_the_operator_manage_keys(runtime: Runtime, cast: Cast) -> None:
    from folders.errors import Forbidden

    for actor in (cast.registrar, cast.compliance, cast.parent):
        with pytest.raises(Forbidden):
            runtime.keys.status(actor)
    assert runtime.keys.status(cast.admin)[0].active
