"""Two writers at once: a check made at the start of a write transaction still holds when
it writes, on SQLite as on PostgreSQL.

Each test forces the worst interleaving instead of hoping for it: both threads stop
right after the read their decision rests on, at a barrier, until both have read. Where
the database serialises the two transactions, as it must, the second cannot reach its
read while the first holds the lock, so the barrier times out and the first goes on
alone: the test then takes one barrier timeout, and never depends on timing otherwise.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.events import Action
from folders.documents import DocumentInfo
from folders.errors import Conflict, InvalidInput
from folders.models import DocumentVersion, GrantScope
from folders.runtime import Runtime
from tests.support import samples
from tests.support.people import Cast, upload_pdf

# How long the first thread waits for the second at the barrier. A serialised second
# thread never arrives, so this is what a passing test costs.
_OVERLAP_WAIT_S = 1.0
_RACER = "racer-"


@contextmanager
def both_stop_after(engine: Engine, is_the_read: Callable[[str], bool]) -> Iterator[None]:
    """Make each of two racing threads wait for the other after its read ``is_the_read``
    (once per thread, and only in threads started by :func:`race`)."""
    barrier = threading.Barrier(2)
    waited = threading.local()

    def after(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        racing = threading.current_thread().name.startswith(_RACER)
        if racing and is_the_read(statement) and not getattr(waited, "done", False):
            waited.done = True
            # Broken: the other thread is held off by the database, so no overlap.
            with suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=_OVERLAP_WAIT_S)

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(engine, "after_cursor_execute", after)


def race(action: Callable[[], Any]) -> list[Any]:
    """Run ``action`` in two threads at once; each one's result or exception."""
    outcomes: list[Any] = [None, None]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = action()
        except BaseException as e:  # the test inspects every outcome
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,), name=f"{_RACER}{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a racing thread hangs"
    return outcomes


def _selects_the_grant(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM grants" in statement


def _numbers_the_version(statement: str) -> bool:
    return "max(document_versions.number)" in statement


def test_two_revokes_of_one_grant_make_one_revocation(runtime: Runtime, cast: Cast) -> None:
    grant = runtime.grants.grant(
        cast.registrar, cast.parent.email, cast.child.id, GrantScope.FOLDER
    )

    with both_stop_after(runtime.engine, _selects_the_grant):
        outcomes = race(lambda: runtime.grants.revoke(cast.registrar, grant.id, "Year over"))

    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], InvalidInput), repr(errors[0])
    assert "already revoked" in str(errors[0])
    events = runtime.audit_log.query(per_page=100).items
    assert [e.event.action for e in events].count(Action.GRANT_REVOKE) == 1
    assert runtime.audit_log.verify().ok


def test_two_corrections_at_once_get_distinct_numbers(runtime: Runtime, cast: Cast) -> None:
    first, _ = upload_pdf(runtime, cast, cast.child)
    data = samples.make_pdf(text="Corrected")

    def correct() -> DocumentInfo:
        return runtime.documents.upload_version(
            cast.registrar, first.id, io.BytesIO(data), "corrected.pdf"
        )

    with both_stop_after(runtime.engine, _numbers_the_version):
        outcomes = race(correct)

    # The lock serialises them, so both succeed (a clash would be a Conflict, below).
    assert all(isinstance(o, DocumentInfo) for o in outcomes), outcomes
    assert sorted(o.current.number for o in outcomes) == [2, 3]
    folder = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert [v.number for v in folder[0].versions] == [3, 2, 1]
    with Session(runtime.engine) as session:
        keys = set(session.scalars(select(DocumentVersion.object_key)))
    assert {o.key for o in runtime.store.list("versions/")} == keys


def test_a_version_number_taken_meanwhile_is_a_conflict(runtime: Runtime, cast: Cast) -> None:
    """Whatever lets two corrections pick one number, the loser gets a Conflict that
    says so, and its object is removed, never a raw database error."""
    first, _ = upload_pdf(runtime, cast, cast.child)

    def stale_number(
        _conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool
    ) -> tuple[str, Any]:
        # The next number is computed as if version 1 did not exist yet.
        if _numbers_the_version(statement):
            return "SELECT NULL", type(params)()
        return statement, params

    event.listen(runtime.engine, "before_cursor_execute", stale_number, retval=True)
    try:
        with pytest.raises(Conflict, match="version 1 of this document") as raised:
            runtime.documents.upload_version(
                cast.registrar, first.id, io.BytesIO(samples.make_pdf(text="Late")), "late.pdf"
            )
    finally:
        event.remove(runtime.engine, "before_cursor_execute", stale_number)
    assert isinstance(raised.value.__cause__, IntegrityError)  # kept for the logs
    folder = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert [v.number for v in folder[0].versions] == [1]
    assert [o.key for o in runtime.store.list("versions/")] == [_key_of(runtime, first)]


def _key_of(runtime: Runtime, info: DocumentInfo) -> str:
    with Session(runtime.engine) as session:
        key = session.scalar(
            select(DocumentVersion.object_key).where(DocumentVersion.id == info.current.id)
        )
    assert key is not None
    return key
