"""Key rotation rewraps data keys in SQL only; crypto-shredding destroys content for good."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.events import Action
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


def retire_and_restore_an_older_row(runtime: Runtime) -> None:
    """Rotate, retire version 1, then put the one version row back as a database backup
    from before the rotation holds it: its data key wrapped under the retired version."""
    with Session(runtime.engine) as session:
        row = session.scalars(select(DocumentVersion)).one()
        old = (row.wrapped_dek, row.key_id, row.key_version)
    runtime.keys.rotate(OPERATOR)
    runtime.keys.retire_below(OPERATOR, 2)
    with Session(runtime.engine) as session, session.begin():
        row = session.scalars(select(DocumentVersion)).one()
        row.wrapped_dek, row.key_id, row.key_version = old


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
    retire_and_restore_an_older_row(runtime)
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


def test_destroying_retired_versions_makes_an_older_backup_unreadable(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    with Session(runtime.engine) as session:
        row = session.scalars(select(DocumentVersion)).one()
        backup = (row.wrapped_dek, row.key_id, row.key_version)  # as an older dump holds it
    runtime.keys.rotate(OPERATOR)
    with pytest.raises(InvalidInput, match="reason"):
        runtime.keys.destroy_retired(OPERATOR, " ")
    assert runtime.keys.destroy_retired(OPERATOR, "Backups expired") == []  # none retired
    runtime.keys.retire_below(OPERATOR, 2)

    assert runtime.keys.destroy_retired(OPERATOR, "Backups of 2024 expired") == [1]

    assert [(v.version, v.destroyed) for v in runtime.keys.status(OPERATOR)] == [
        (1, True),
        (2, False),
    ]
    [event] = [e for e in runtime.audit_log.events() if e.event.action is Action.KEY_DESTROY]
    assert event.event.detail == "key versions 1: Backups of 2024 expired"
    assert runtime.keys.destroy_retired(OPERATOR, "again") == []
    # The key file no longer holds version 1, so no edit of it brings the older dump back;
    # the current database still opens the document.
    stored = json.loads(runtime.settings.keyring_path.read_text())
    assert [v["key"] is None for v in stored["versions"]] == [True, False]
    wrapped, key_id, version = backup
    assert wrapped is not None
    with pytest.raises(KeyringError):
        runtime.keyring.unwrap(wrapped, key_id, version, b"")
    opened = runtime.documents.open(cast.registrar, document.id, purpose="Records check")
    assert b"".join(opened.chunks).startswith(b"%PDF")


def test_destroying_is_refused_while_the_database_needs_a_retired_version(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    retire_and_restore_an_older_row(runtime)

    with pytest.raises(InvalidInput, match="still wrapped under retired versions"):
        runtime.keys.destroy_retired(OPERATOR, "Backups expired")
    assert not any(v.destroyed for v in runtime.keys.status(OPERATOR))
    assert not any(e.event.action is Action.KEY_DESTROY for e in runtime.audit_log.events())


def test_only_admins_and_the_operator_manage_keys(runtime: Runtime, cast: Cast) -> None:
    from folders.errors import Forbidden

    for actor in (cast.registrar, cast.compliance, cast.parent):
        with pytest.raises(Forbidden):
            runtime.keys.status(actor)
    assert runtime.keys.status(cast.admin)[0].active


@pytest.fixture
def server(runtime: Runtime) -> Iterator[Runtime]:
    """A second runtime on the same files and database: a server worker that loaded the
    keyring before the operator's `satchel keys` commands (``runtime``) ran."""
    worker = Runtime(runtime.settings)
    assert worker.keyring.active_version == 1
    yield worker
    worker.close()


def key_versions(runtime: Runtime) -> dict[uuid.UUID, int]:
    with Session(runtime.engine) as session:
        rows = session.execute(select(DocumentVersion.document_id, DocumentVersion.key_version))
        return {document_id: version for document_id, version in rows}


def test_a_running_server_follows_key_changes_made_by_the_command_line(
    runtime: Runtime, server: Runtime, cast: Cast
) -> None:
    before, data = upload_pdf(runtime, cast, cast.child, title="Before")
    with Session(runtime.engine) as session:
        row = session.scalars(select(DocumentVersion)).one()
        backup = (row.wrapped_dek, row.key_id, row.key_version)

    runtime.keys.rotate(OPERATOR)
    # The server opens a document rewrapped under version 2 (it used to fail with "has no
    # version 2" until restarted) and wraps new uploads under version 2.
    opened = server.documents.open(cast.registrar, before.id, purpose="Records check")
    assert b"".join(opened.chunks) == data
    after, _ = upload_pdf(server, cast, cast.child, title="After")
    assert key_versions(runtime) == {before.id: 2, after.id: 2}

    runtime.keys.retire_below(OPERATOR, 2)
    wrapped, key_id, version = backup
    assert wrapped is not None
    with pytest.raises(KeyringError, match="retired"):
        server.keyring.unwrap(wrapped, key_id, version, b"")
    assert [v.retired for v in server.keys.status(OPERATOR)] == [True, False]

    assert runtime.keys.destroy_retired(OPERATOR, "Backups of 2024 expired") == [1]
    assert [v.destroyed for v in server.keys.status(OPERATOR)] == [True, False]
    opened = server.documents.open(cast.registrar, after.id, purpose="Records check")
    assert b"".join(opened.chunks).startswith(b"%PDF")


def test_rewrapping_follows_a_rotation_made_meanwhile(
    runtime: Runtime, server: Runtime, cast: Cast
) -> None:
    for i in range(3):
        upload_pdf(runtime, cast, cast.child, title=f"Doc {i}")
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 1:  # another operator rotates again after the first batch
            server.keyring.rotate(now=server.clock())
        assert len(calls) < 20, "rewrapping does not converge"

    result = runtime.keys.rotate(OPERATOR, batch_size=1, progress=progress)
    assert (result.active_version, result.remaining) == (3, 0)
    assert set(key_versions(runtime).values()) == {3}
    assert runtime.keys.status(OPERATOR)[2].data_keys == 3
