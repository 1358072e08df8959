"""Key rotation rewraps data keys in SQL only; crypto-shredding destroys content for good."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.events import Action, Event
from folders.actor import Actor
from folders.errors import InvalidInput, KeyRetiredDuringUpload, NotFound
from folders.models import DocumentVersion
from folders.runtime import Runtime
from storage.errors import KeyringError
from storage.keyring import Keyring
from tests.support import samples
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


def test_retiring_the_active_version_is_refused_with_what_to_do(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    keyring = runtime.keyring.path.read_bytes()
    with pytest.raises(InvalidInput, match="would retire the active version 1") as refused:
        runtime.keys.retire_below(OPERATOR, 2)
    assert "`satchel keys rotate`" in refused.value.public_message
    assert "--resume" not in refused.value.public_message
    assert runtime.keyring.path.read_bytes() == keyring


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


# --- uploads under way while the keyring changes ------------------------------------------


def after_each_put(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, hook: Callable[[], None]
) -> None:
    """Run ``hook`` after every object put: while an upload is sealed and stored, before
    its row is written."""
    put = runtime.store.put

    def put_then_hook(*args: Any, **kwargs: Any) -> Any:
        result = put(*args, **kwargs)
        hook()
        return result

    monkeypatch.setattr(runtime.store, "put", put_then_hook)


def operator_rotates(runtime: Runtime) -> None:
    """`satchel keys rotate` run by another process: its own keyring on the same file."""
    Keyring.load(runtime.settings.keyring_path).rotate(now=runtime.clock())


def test_an_upload_stored_across_a_rotation_is_recorded_under_the_new_version(
    runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = upload_pdf(runtime, cast, cast.child)
    after_each_put(runtime, monkeypatch, lambda: operator_rotates(runtime))

    second, data = upload_pdf(runtime, cast, cast.child, title="Second")
    corrected = runtime.documents.upload_version(
        cast.registrar, first.id, io.BytesIO(samples.make_pdf(pages=1)), "fixed.pdf"
    )

    with Session(runtime.engine) as session:
        rows = session.execute(select(DocumentVersion.id, DocumentVersion.key_version)).all()
        versions = dict(rows)
    # Sealed under versions 1 and 2, each written under the version active at its commit.
    assert versions[second.current.id] == 2 and versions[corrected.current.id] == 3
    # The first document stays under version 1: only `keys rotate` rewraps stored keys.
    assert [v.data_keys for v in runtime.keys.status(OPERATOR)] == [1, 1, 1]
    opened = runtime.documents.open(cast.registrar, second.id, purpose="Records check")
    assert b"".join(opened.chunks) == data


def test_an_upload_whose_key_version_is_retired_meanwhile_fails_and_keeps_nothing(
    runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, _ = upload_pdf(runtime, cast, cast.child)
    objects_before = set(etags(runtime))

    def rotate_and_retire() -> None:
        runtime.keys.rotate(OPERATOR)
        runtime.keys.retire_below(OPERATOR, 2)  # nothing counted: the upload has no row yet

    after_each_put(runtime, monkeypatch, rotate_and_retire)
    with pytest.raises(KeyRetiredDuringUpload, match="retired while this file was being stored"):
        upload_pdf(runtime, cast, cast.child, title="Lost?")

    with Session(runtime.engine) as session:
        assert set(session.scalars(select(DocumentVersion.key_version))) == {2}  # `kept` only
    assert set(etags(runtime)) == objects_before
    uploads = [e for e in runtime.audit_log.events() if e.event.action is Action.DOCUMENT_UPLOAD]
    assert [e.event.document_id for e in uploads] == [str(kept.id)]


def test_retiring_waits_for_an_upload_being_recorded_and_then_counts_it(
    runtime: Runtime, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome: list[BaseException | None] = []
    waited: list[bool] = []
    append = runtime.audit_log.append

    def retire() -> None:
        try:
            runtime.keys.retire_below(OPERATOR, 2)
            outcome.append(None)
        except BaseException as e:  # reported to the test below
            outcome.append(e)

    def rotate_and_retire_then_append(session: Session, event: Event) -> Any:
        # The upload's row is written, under version 1, and not yet committed: the
        # operator rotates to version 2 and retires version 1.
        operator_rotates(runtime)
        thread = threading.Thread(target=retire)
        thread.start()
        thread.join(timeout=1.0)
        waited.append(thread.is_alive())
        monkeypatch.setattr(runtime.audit_log, "append", append)
        threads.append(thread)
        return append(session, event)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(runtime.audit_log, "append", rotate_and_retire_then_append)
    document, data = upload_pdf(runtime, cast, cast.child, title="In flight")
    threads[0].join(timeout=60)

    assert waited == [True]  # retiring waited for the upload's transaction
    [error] = outcome
    assert isinstance(error, InvalidInput) and "1 data keys are still wrapped" in str(error)
    assert [v.retired for v in runtime.keys.status(OPERATOR)] == [False, False]
    opened = runtime.documents.open(cast.registrar, document.id, purpose="Records check")
    assert b"".join(opened.chunks) == data
    runtime.keys.rotate(OPERATOR, resume=True)
    runtime.keys.retire_below(OPERATOR, 2)
