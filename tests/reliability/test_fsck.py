"""`satchel fsck`: the object store reconciled with the version rows, on SQLite and
PostgreSQL with the local store, and once on SeaweedFS read back with minio.

Damage is done the way it happens: objects deleted, truncated or bit-flipped in the
store, rows pointing elsewhere, uploads interrupted between put and commit. Every check
and repair is audited, and a repair whose event cannot be written deletes nothing.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from minio import Minio
from sqlalchemy import update
from sqlalchemy.orm import Session

from audit.errors import AuditUnavailable
from audit.events import Action, Event, Outcome
from folders.actor import Actor
from folders.bulk import INTENT_PREFIX, IngestBusy, IngestIntents, IngestLock
from folders.categories import Category
from folders.errors import Forbidden, InvalidInput
from folders.fsck import Finding, FindingKind, Fsck, FsckReport
from folders.models import DocumentVersion, Role
from folders.runtime import Runtime
from storage.errors import ObjectNotFound
from tests.support import samples
from tests.support.faults import break_audit_inserts
from tests.support.people import Cast, make_actor, upload_pdf
from web.cli import cli

OPERATOR = Actor.operator()
LATER = timedelta(days=2)  # past the default grace period of 24 hours


def clock_at(offset: timedelta) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + offset


def fsck(runtime: Runtime, offset: timedelta = timedelta(0)) -> Fsck:
    return Fsck(runtime.engine, runtime.store, runtime.vault, runtime.audit_log, clock_at(offset))


def kinds(report: FsckReport) -> dict[str, FindingKind]:
    return {f.key: f.kind for f in report.findings}


def stored_bytes(runtime: Runtime, key: str) -> bytes:
    with runtime.store.open(key) as stream:
        return stream.read()


def replace_object(runtime: Runtime, key: str, data: bytes) -> None:
    runtime.store.put(key, io.BytesIO(data), len(data))


def object_key(runtime: Runtime, version_id: uuid.UUID) -> str:
    with Session(runtime.engine) as session:
        version = session.get(DocumentVersion, version_id)
        assert version is not None
        return version.object_key


def opens(runtime: Runtime, document_id: uuid.UUID) -> bytes:
    return b"".join(runtime.documents.open(OPERATOR, document_id).chunks)


def fsck_events(runtime: Runtime) -> list[Event]:
    """The ``store.fsck`` and ``store.repair`` events, oldest first."""
    return [
        e.event
        for e in runtime.audit_log.events()
        if e.event.action in (Action.FSCK, Action.FSCK_REPAIR)
    ]


def stored(runtime: Runtime, key: str) -> bool:
    try:
        runtime.store.head(key)
    except ObjectNotFound:
        return False
    return True


def put_orphan(runtime: Runtime) -> str:
    """An object that no row references, as an upload killed before its commit leaves."""
    key = f"versions/{uuid.uuid4()}"
    replace_object(runtime, key, samples.make_pdf(text="never committed"))
    return key


def test_a_consistent_installation_is_clean_shallow_and_deep(runtime: Runtime, cast: Cast) -> None:
    first, _ = upload_pdf(runtime, cast, cast.child)
    corrected = runtime.documents.upload_version(
        cast.registrar, first.id, io.BytesIO(samples.make_png()), "scan.png"
    )
    upload_pdf(runtime, cast, cast.other_child, title="Transcript", category=Category.TRANSCRIPT)
    runtime.keys.shred_version(OPERATOR, corrected.versions[-1].id, "retention schedule")
    runtime.audit_log.checkpoint()

    shallow = fsck(runtime).check(OPERATOR)
    deep = fsck(runtime).check(OPERATOR, deep=True)

    for report in (shallow, deep):
        assert report.clean, report.findings
        assert report.findings == ()
        assert (report.versions, report.shredded, report.objects) == (3, 1, 2)
    assert (shallow.authenticated, deep.authenticated) == (0, 2)


def test_missing_and_truncated_objects_are_reported_and_never_repaired(
    runtime: Runtime, cast: Cast
) -> None:
    gone, _ = upload_pdf(runtime, cast, cast.child, title="Gone")
    cut, _ = upload_pdf(runtime, cast, cast.child, title="Cut")
    gone_key = object_key(runtime, gone.current.id)
    cut_key = object_key(runtime, cut.current.id)
    runtime.store.delete(gone_key)
    sealed = stored_bytes(runtime, cut_key)
    replace_object(runtime, cut_key, sealed[:-1])

    checker = fsck(runtime, LATER)
    report = checker.check(OPERATOR)
    assert kinds(report) == {
        gone_key: FindingKind.MISSING_OBJECT,
        cut_key: FindingKind.SIZE_MISMATCH,
    }
    missing = next(f for f in report.findings if f.key == gone_key)
    assert (missing.version_id, missing.document_id) == (gone.current.id, gone.id)
    assert not report.clean and report.repairable == ()

    repaired = checker.repair(OPERATOR, report)
    assert repaired.deleted == () and repaired.kept == ()
    assert stored_bytes(runtime, cut_key) == sealed[:-1]


def test_only_the_deep_check_finds_a_flipped_bit(runtime: Runtime, cast: Cast) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    key = object_key(runtime, document.current.id)
    sealed = bytearray(stored_bytes(runtime, key))
    sealed[200] ^= 0x01  # inside the first segment's ciphertext: same size, wrong bytes
    replace_object(runtime, key, bytes(sealed))

    assert fsck(runtime).check(OPERATOR).clean
    deep = fsck(runtime).check(OPERATOR, deep=True)
    assert kinds(deep) == {key: FindingKind.CORRUPT_OBJECT}
    assert deep.authenticated == 0


def test_the_deep_check_names_a_data_key_the_keyring_cannot_unwrap(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    with runtime.engine.begin() as connection:
        connection.execute(
            update(DocumentVersion)
            .where(DocumentVersion.id == document.current.id)
            .values(key_version=99)
        )
    deep = fsck(runtime).check(OPERATOR, deep=True)
    assert kinds(deep) == {object_key(runtime, document.current.id): FindingKind.KEY_UNAVAILABLE}


def test_orphans_are_pending_within_the_grace_period_then_repaired(
    runtime: Runtime, cast: Cast
) -> None:
    document, original = upload_pdf(runtime, cast, cast.child)
    runtime.audit_log.checkpoint()
    checkpoints = {info.key for info in runtime.store.list("audit/")}
    assert checkpoints
    orphan = put_orphan(runtime)

    now = fsck(runtime).check(OPERATOR)
    assert kinds(now) == {orphan: FindingKind.PENDING}
    assert now.clean  # an upload in progress is not a problem
    assert fsck(runtime).repair(OPERATOR, now).deleted == ()

    later = fsck(runtime, LATER)
    report = later.check(OPERATOR)
    assert kinds(report) == {orphan: FindingKind.ORPHAN_OBJECT}
    assert not report.clean
    assert later.repair(OPERATOR, report).deleted == (orphan,)

    assert later.check(OPERATOR).clean
    assert {info.key for info in runtime.store.list("versions/")} == {
        object_key(runtime, document.current.id)
    }
    assert {info.key for info in runtime.store.list("audit/")} == checkpoints
    assert opens(runtime, document.id) == original


def test_repair_asks_the_database_again_right_before_each_delete(
    runtime: Runtime, cast: Cast
) -> None:
    document, original = upload_pdf(runtime, cast, cast.child)
    key = object_key(runtime, document.current.id)
    elsewhere = f"versions/{uuid.uuid4()}"

    def point_row_at(target: str) -> None:
        with runtime.engine.begin() as connection:
            connection.execute(
                update(DocumentVersion)
                .where(DocumentVersion.id == document.current.id)
                .values(object_key=target)
            )

    # While the check runs, the row does not reference the object (as if its commit
    # were still on its way); by the time of the repair it does.
    point_row_at(elsewhere)
    checker = fsck(runtime, LATER)
    report = checker.check(OPERATOR)
    assert kinds(report) == {
        key: FindingKind.ORPHAN_OBJECT,
        elsewhere: FindingKind.MISSING_OBJECT,
    }
    point_row_at(key)

    repaired = checker.repair(OPERATOR, report)
    assert repaired.deleted == ()
    assert [f.key for f in repaired.kept] == [key]
    assert opens(runtime, document.id) == original


def intend(runtime: Runtime, object_key: str) -> None:
    """Leave an ingest intent for ``object_key``, as a killed bulk ingest does."""
    IngestIntents(runtime.engine).add(object_key, runtime.clock())


def intents(runtime: Runtime) -> set[str]:
    return {key for key, _ in IngestIntents(runtime.engine).all()}


def test_stale_ingest_intents_are_settled_like_bulk_ingest_recovery(
    runtime: Runtime, cast: Cast
) -> None:
    committed, original = upload_pdf(runtime, cast, cast.child)
    committed_key = object_key(runtime, committed.current.id)
    orphan = put_orphan(runtime)
    never_written = f"versions/{uuid.uuid4()}"
    for key in (committed_key, orphan, never_written):
        intend(runtime, key)

    checker = fsck(runtime, LATER)
    report = checker.check(OPERATOR)
    assert kinds(report) == {
        orphan: FindingKind.ORPHAN_OBJECT,
        INTENT_PREFIX + committed_key: FindingKind.STALE_INTENT,
        INTENT_PREFIX + orphan: FindingKind.STALE_INTENT,
        INTENT_PREFIX + never_written: FindingKind.STALE_INTENT,
    }
    repaired = checker.repair(OPERATOR, report)
    assert set(repaired.deleted) == {
        orphan,
        INTENT_PREFIX + committed_key,
        INTENT_PREFIX + orphan,
        INTENT_PREFIX + never_written,
    }
    assert intents(runtime) == set()
    assert stored(runtime, committed_key) and not stored(runtime, orphan)
    assert checker.check(OPERATOR).clean
    assert opens(runtime, committed.id) == original


def test_a_recent_intent_is_pending_and_repair_keeps_it_and_its_object(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    intend(runtime, orphan)

    checker = fsck(runtime)  # now: both are younger than the grace period
    report = checker.check(OPERATOR)
    assert kinds(report) == {
        orphan: FindingKind.PENDING,
        INTENT_PREFIX + orphan: FindingKind.PENDING,
    }
    assert report.clean and report.intents == 1
    assert checker.repair(OPERATOR, report).deleted == ()
    assert stored(runtime, orphan) and intents(runtime) == {orphan}


def test_repair_deletes_nothing_outside_versions_and_ingest_intents(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    checkpoint = runtime.audit_log.checkpoint()
    key = f"audit/checkpoints/{checkpoint.checkpoint.tree_size:020d}.note"
    forged = FsckReport(
        checked_at=datetime.now(UTC),
        deep=False,
        grace=timedelta(0),
        versions=0,
        shredded=0,
        objects=0,
        intents=0,
        authenticated=0,
        findings=(Finding(FindingKind.ORPHAN_OBJECT, key, "forged"),),
    )
    with pytest.raises(ValueError, match="does not delete"):
        fsck(runtime, LATER).repair(OPERATOR, forged)
    assert stored_bytes(runtime, key) == checkpoint.note


def test_a_clean_check_records_one_allowed_event(runtime: Runtime, cast: Cast) -> None:
    upload_pdf(runtime, cast, cast.child)
    put_orphan(runtime)  # within the grace period: pending, not a problem

    assert fsck(runtime).check(OPERATOR, deep=True).clean

    [event] = fsck_events(runtime)
    assert (event.action, event.outcome) == (Action.FSCK, Outcome.ALLOWED)
    assert (event.actor_role, event.actor_email) == ("operator", OPERATOR.email)
    assert event.detail == (
        "deep check, grace 24 h: 1 versions (0 shredded), 2 objects, 0 ingest intents, "
        "1 authenticated; findings: pending 1"
    )


def test_a_check_with_findings_records_an_error_event_with_the_counts(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    runtime.store.delete(object_key(runtime, document.current.id))
    put_orphan(runtime)
    put_orphan(runtime)

    report = fsck(runtime, LATER).check(OPERATOR)

    assert not report.clean
    [event] = fsck_events(runtime)
    assert (event.action, event.outcome) == (Action.FSCK, Outcome.ERROR)
    assert event.detail == (
        "shallow check, grace 24 h: 1 versions (0 shredded), 2 objects, 0 ingest intents; "
        "findings: missing_object 1, orphan_object 2"
    )


def test_a_repair_records_its_intent_before_deleting_and_its_result_after(
    runtime: Runtime, cast: Cast
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    intend(runtime, orphan)
    checker = fsck(runtime, LATER)
    report = checker.check(OPERATOR)

    assert set(checker.repair(OPERATOR, report).deleted) == {orphan, INTENT_PREFIX + orphan}

    _, intent, result = fsck_events(runtime)
    assert (intent.action, intent.outcome) == (Action.FSCK_REPAIR, Outcome.ALLOWED)
    assert intent.detail == (
        "deleting what is still unreferenced and older than 24 h: orphan_object 1, stale_intent 1"
    )
    assert (result.action, result.outcome) == (Action.FSCK_REPAIR, Outcome.ALLOWED)
    assert result.detail == (
        "deleted: objects 1, ingest intents 1; kept (referenced or too recent when checked "
        "again): 0; problems remaining: none"
    )

    # A problem repair cannot fix makes its result an error; nothing to repair, no event.
    runtime.store.delete(object_key(runtime, document.current.id))
    orphan = put_orphan(runtime)
    checker.repair(OPERATOR, checker.check(OPERATOR))
    *_, check, _, result = fsck_events(runtime)
    assert (check.action, check.outcome) == (Action.FSCK, Outcome.ERROR)
    assert (result.action, result.outcome) == (Action.FSCK_REPAIR, Outcome.ERROR)
    assert result.detail is not None
    assert result.detail.endswith("problems remaining: missing_object 1")
    before = len(fsck_events(runtime))
    assert checker.repair(OPERATOR, checker.check(OPERATOR)).deleted == ()
    assert len(fsck_events(runtime)) == before + 1  # the check's event only


def test_no_repair_without_its_event(runtime: Runtime, cast: Cast) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    intend(runtime, orphan)
    checker = fsck(runtime, LATER)
    report = checker.check(OPERATOR)
    assert len(report.repairable) == 2

    break_audit_inserts(runtime.engine)
    with pytest.raises(AuditUnavailable):
        checker.repair(OPERATOR, report)
    assert stored(runtime, orphan) and intents(runtime) == {orphan}
    with pytest.raises(AuditUnavailable):
        checker.check(OPERATOR)  # nor a report without its event


@pytest.mark.parametrize("role", [Role.REGISTRAR, Role.COMPLIANCE, Role.GUARDIAN])
def test_only_admins_and_the_operator_run_fsck(runtime: Runtime, role: Role) -> None:
    staff = make_actor(runtime, f"{role.value}@school.example", role)
    with pytest.raises(Forbidden):
        fsck(runtime).check(staff)
    admin = make_actor(runtime, "admin@school.example", Role.ADMIN)
    assert fsck(runtime).check(admin).clean


def test_a_repair_refuses_a_grace_period_shorter_than_an_upload_may_take(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    checker = fsck(runtime, timedelta(hours=1))
    report = checker.check(OPERATOR, grace=timedelta(minutes=59))
    assert kinds(report) == {orphan: FindingKind.ORPHAN_OBJECT}

    with pytest.raises(InvalidInput) as refused:
        checker.repair(OPERATOR, report)
    assert refused.value.public_message == (
        "A repair needs a grace period of at least 1 h, not 0.983333 h: an upload in "
        "progress could lose its object."
    )
    assert stored(runtime, orphan)
    assert [e.action for e in fsck_events(runtime)] == [Action.FSCK]  # no repair began

    # Satchel stopped (a restore): nothing else writes, so any grace period is safe.
    assert checker.repair(OPERATOR, report, unsafe_short_grace=True).deleted == (orphan,)


def test_a_repair_deletes_nothing_while_a_bulk_ingest_holds_its_lock(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    intend(runtime, orphan)  # a run that is putting this object, or one that died
    checker = Fsck(
        runtime.engine,
        runtime.store,
        runtime.vault,
        runtime.audit_log,
        clock_at(LATER),
        ingest_lock=IngestLock(runtime.engine, wait_seconds=0.3),
    )
    report = checker.check(OPERATOR)
    assert len(report.repairable) == 2

    with IngestLock(runtime.engine).held(), pytest.raises(IngestBusy) as busy:
        checker.repair(OPERATOR, report)
    assert "run `satchel fsck --repair` again when it ends" in busy.value.public_message
    assert stored(runtime, orphan) and intents(runtime) == {orphan}
    assert [e.action for e in fsck_events(runtime)] == [Action.FSCK]

    # Once the run is over, the repair goes ahead.
    assert set(checker.repair(OPERATOR, report).deleted) == {orphan, INTENT_PREFIX + orphan}


# The command ------------------------------------------------------------------------------


def satchel(runtime: Runtime, *args: str) -> Result:
    env = {
        "SATCHEL_DATA_DIR": str(runtime.settings.data_dir),
        "SATCHEL_DATABASE_URL": runtime.settings.effective_database_url,
    }
    return CliRunner().invoke(cli, ["fsck", *args], env=env)


def test_the_command_reports_and_repairs_with_exit_codes(
    runtime: Runtime, cast: Cast, tmp_path: Path
) -> None:
    document, _ = upload_pdf(runtime, cast, cast.child)
    clean = satchel(runtime, "--deep")
    assert clean.exit_code == 0, clean.output
    assert "1 object authenticated" in clean.output and "OK: no problems" in clean.output

    orphan = put_orphan(runtime)
    within_grace = satchel(runtime)
    assert within_grace.exit_code == 0, within_grace.output
    assert f"PENDING  {orphan}" in within_grace.output

    found = satchel(runtime, "--grace-hours", "0", "--json")
    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert [(f["kind"], f["key"], f["repairable"]) for f in report["findings"]] == [
        ("orphan_object", orphan, True)
    ]
    assert report["remaining_problems"] == 1 and report["repair"] is None

    repaired = satchel(runtime, "--grace-hours", "0", "--repair", "--unsafe-short-grace")
    assert repaired.exit_code == 0, repaired.output
    assert f"deleted  {orphan}" in repaired.output

    runtime.store.delete(object_key(runtime, document.current.id))
    missing = satchel(runtime, "--repair", "--grace-hours", "0", "--unsafe-short-grace")
    assert missing.exit_code == 1
    assert "MISSING" in missing.output and "1 problem" in missing.output

    # Every run is in the audit trail, as the operator; the repair before and after.
    events = fsck_events(runtime)
    assert [(e.action, e.outcome) for e in events] == [
        (Action.FSCK, Outcome.ALLOWED),  # clean
        (Action.FSCK, Outcome.ALLOWED),  # pending only
        (Action.FSCK, Outcome.ERROR),  # the orphan
        (Action.FSCK, Outcome.ERROR),  # the orphan again, then repaired
        (Action.FSCK_REPAIR, Outcome.ALLOWED),
        (Action.FSCK_REPAIR, Outcome.ALLOWED),
        (Action.FSCK, Outcome.ERROR),  # missing: nothing to repair, no repair event
    ]
    assert {e.actor_email for e in events} == {OPERATOR.email}


@pytest.mark.parametrize("grace", ["0", "0.99"])
def test_the_command_refuses_a_short_grace_period_for_a_repair(
    runtime: Runtime, cast: Cast, grace: str
) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)

    refused = satchel(runtime, "--repair", "--grace-hours", grace)

    assert refused.exit_code == 2, refused.output
    assert isinstance(refused.exception, SystemExit) and "Traceback" not in refused.output
    # A usage error as Click prints every other one: the usage, then one Error line.
    assert refused.output.startswith("Usage: ")
    assert [line for line in refused.output.splitlines() if line.startswith("Error:")] == [
        f"Error: --repair needs --grace-hours of at least 1 (given {float(grace):g}); below "
        "that, only with --unsafe-short-grace while Satchel is stopped."
    ]
    assert stored(runtime, orphan) and fsck_events(runtime) == []  # nothing ran
    # Only a repair needs it: a check with a short grace period deletes nothing.
    checked = satchel(runtime, "--grace-hours", grace)
    assert checked.exit_code == (1 if grace == "0" else 0) and orphan in checked.output


def test_the_command_repairs_nothing_when_the_audit_log_refuses(
    runtime: Runtime, cast: Cast
) -> None:
    upload_pdf(runtime, cast, cast.child)
    orphan = put_orphan(runtime)
    break_audit_inserts(runtime.engine)

    refused = satchel(runtime, "--repair", "--grace-hours", "0", "--unsafe-short-grace")

    assert refused.exit_code == 1
    assert "audit" in refused.output and "deleted" not in refused.output
    assert stored(runtime, orphan)


@pytest.mark.s3
def test_fsck_on_seaweedfs_agrees_with_an_independent_listing(
    s3_runtime: Runtime, minio_client: Minio, s3_bucket: str, s3_prefix: str
) -> None:
    registrar = make_actor(s3_runtime, "registrar@school.example", Role.REGISTRAR)
    student = s3_runtime.students.add_student(registrar, "S-1", "Lucia", "Lopez")
    kept = s3_runtime.documents.upload(
        registrar,
        student.id,
        io.BytesIO(samples.make_pdf()),
        "kept.pdf",
        category=Category.OTHER,
        title="Kept",
    )
    lost = s3_runtime.documents.upload(
        registrar,
        student.id,
        io.BytesIO(samples.make_jpeg()),
        "lost.jpg",
        category=Category.OTHER,
        title="Lost",
    )
    lost_key = object_key(s3_runtime, lost.current.id)
    minio_client.remove_object(s3_bucket, s3_prefix + lost_key)
    orphan = put_orphan(s3_runtime)

    checker = fsck(s3_runtime, LATER)
    report = checker.check(OPERATOR, deep=True)
    assert kinds(report) == {
        lost_key: FindingKind.MISSING_OBJECT,
        orphan: FindingKind.ORPHAN_OBJECT,
    }
    assert report.authenticated == 1
    assert checker.repair(OPERATOR, report).deleted == (orphan,)

    listed = {
        str(item.object_name)[len(s3_prefix) :]
        for item in minio_client.list_objects(
            s3_bucket, prefix=s3_prefix + "versions/", recursive=True
        )
    }
    assert listed == {object_key(s3_runtime, kept.current.id)}
