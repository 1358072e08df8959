"""`satchel audit`: verify, checkpoint, prove, pubkey and export, run as an operator would.

The proof test checks `prove --json` output the way a third party would, from
docs/audit-log.md alone: hashlib for RFC 9162 and pyca/cryptography for Ed25519.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from audit.events import Action, Outcome
from config import Settings
from folders.actor import Actor
from folders.runtime import Runtime
from tests.audit.test_tamper import DBA, Clock, sample_event
from web.cli import cli


class Satchel:
    """Runs `satchel` commands in-process against one data directory and database."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.env = {"SATCHEL_DATA_DIR": str(data_dir), "SATCHEL_DATABASE_URL": database_url}
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(cli, list(args), env=self.env)


@pytest.fixture
def satchel(tmp_path: Path, database_url: str) -> Satchel:
    satchel = Satchel(tmp_path / "data", database_url)
    assert satchel("init").exit_code == 0
    return satchel


@pytest.fixture
def runtime(satchel: Satchel, tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    """The same installation, opened by the test to record events (12 hours apart)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    runtime = Runtime(settings, clock=Clock(step=timedelta(hours=12)))
    for i in range(1, 11):
        runtime.audit_log.record(sample_event(i))
    yield runtime
    runtime.close()


def test_verify_reports_an_intact_log_and_is_itself_recorded(
    satchel: Satchel, runtime: Runtime
) -> None:
    result = satchel("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK    10 events and 0 checkpoints verified")
    (recorded,) = runtime.audit_log.query(action=Action.AUDIT_VERIFY).items
    assert recorded.event.actor_email == "operator:cli"
    assert recorded.event.detail is not None and recorded.event.detail.startswith("intact")


def test_verify_names_the_first_bad_sequence_number(satchel: Satchel, runtime: Runtime) -> None:
    runtime.audit_log.checkpoint()
    dba = DBA(runtime.engine)
    dba.disable_triggers()
    dba.run("DELETE FROM audit_events WHERE sequence = 4")
    result = satchel("audit", "verify")
    assert result.exit_code == 1
    assert "FAIL  sequence 4: deleted: event 4 is missing" in result.output
    result = satchel("audit", "verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["ok"], report["first_bad_sequence"], report["problem"]) == (
        False,
        4,
        "deleted",
    )
    assert report["events_checked"] == 3
    assert report["latest_checkpoint"]["tree_size"] == 10
    recorded = runtime.audit_log.query(action=Action.AUDIT_VERIFY).items
    assert [r.event.outcome for r in recorded] == [Outcome.ERROR, Outcome.ERROR]


def test_checkpoint_seals_the_log_and_prints_the_signed_note(
    satchel: Satchel, runtime: Runtime, tmp_path: Path
) -> None:
    result = satchel("audit", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["origin"], document["tree_size"]) == ("satchel/audit", 10)
    note = document["note"].encode()
    stored = tmp_path / "data" / "objects" / "audit" / "checkpoints" / f"{10:020d}.note"
    assert stored.read_bytes() == note
    again = satchel("audit", "checkpoint")
    assert again.exit_code == 0 and again.stdout.encode() == note  # nothing new to seal
    body = note.split(b"\n\n")[0].decode().splitlines()
    assert body[:3] == [
        "satchel/audit",
        "10",
        base64.b64encode(bytes.fromhex(document["root_hash"])).decode(),
    ]


def _verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, written from the RFC for this test."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def _verify_note(note: str, public_key: Ed25519PublicKey, name: str) -> tuple[int, bytes]:
    """Check a C2SP signed note's Ed25519 signature; return (tree size, root hash)."""
    text, _, signatures = note.rpartition("\n\n")
    body = (text + "\n").encode()
    raw = public_key.public_bytes_raw()
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()[:4]
    for line in signatures.splitlines():
        signer, blob = line.removeprefix("\N{EM DASH} ").split(" ")
        decoded = base64.b64decode(blob)
        if signer == name and decoded[:4] == key_id:
            public_key.verify(decoded[4:], body)  # raises InvalidSignature
            lines = text.split("\n")
            return int(lines[1]), base64.b64decode(lines[2])
    raise AssertionError("no signature by the pinned key")


def test_prove_prints_a_proof_anyone_can_check_without_satchel(
    satchel: Satchel, runtime: Runtime
) -> None:
    pem = satchel("audit", "pubkey")
    assert pem.exit_code == 0 and pem.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    public_key = load_pem_public_key(pem.stdout.encode())
    assert isinstance(public_key, Ed25519PublicKey)

    result = satchel("audit", "prove", "7", "--json")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    entry = proof["entry"].encode("utf-8")
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    assert leaf.hex() == proof["leaf_hash"]
    assert json.loads(entry)["seq"] == 7 == proof["leaf_index"] + 1
    size, root = _verify_note(proof["checkpoint"], public_key, "satchel/audit")
    # The proof request was itself recorded first, so the tree holds 11 events.
    assert (size, root.hex()) == (11, proof["root_hash"]) == (proof["tree_size"], root.hex())
    hashes = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
    assert _verify_inclusion(leaf, 6, size, hashes, root)
    assert not _verify_inclusion(
        hashlib.sha256(b"\x00" + entry + b" ").digest(), 6, size, hashes, root
    )

    text = satchel("audit", "prove", "7")
    assert text.exit_code == 0
    assert f"leaf hash    {proof['leaf_hash']}" in text.output


def test_prove_names_a_missing_event(satchel: Satchel, runtime: Runtime) -> None:
    result = satchel("audit", "prove", "99")
    assert result.exit_code == 1
    assert "no audit event with sequence number 99" in result.output


def test_export_jsonl_gives_the_exact_entries_and_is_recorded_first(
    satchel: Satchel, runtime: Runtime
) -> None:
    student = "10000000-0000-4000-8000-000000000003"
    result = satchel("audit", "export", "--format", "jsonl", "--student", student)
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.split(b"\n")
    assert lines[-1] == b""
    expected = [r.entry for r in runtime.audit_log.events() if r.event.student_id == student]
    # The export's own event names the student and was committed before the export ran.
    assert lines[:-1] == expected
    export_event = json.loads(expected[-1])
    assert export_event["action"] == "audit.export"
    assert export_event["detail"] == f"format=jsonl student_id={student}"
    assert len(expected) == 3


def test_export_by_district_id_names_the_student_like_every_other_command(
    satchel: Satchel, runtime: Runtime
) -> None:
    student = runtime.students.add_student(Actor.operator(), "D-4242", "Ada", "Byron")
    result = satchel("audit", "export", "--format", "csv", "--student", "D-4242")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [row["action"] for row in rows] == ["student.create", "audit.export"]
    assert {row["student_id"] for row in rows} == {str(student.id)}

    unknown = satchel("audit", "export", "--format", "csv", "--student", "D-0000")
    assert unknown.exit_code == 1
    assert "No student with the district id D-0000." in unknown.output


def test_export_csv_by_actor_and_day_to_a_file(
    satchel: Satchel, runtime: Runtime, tmp_path: Path
) -> None:
    output = tmp_path / "events.csv"
    result = satchel(
        "audit",
        "export",
        "--format",
        "csv",
        "--actor",
        "USER2@school.example",
        "--since",
        "2025-09-01",
        "--until",
        "2025-09-03",
        "--output",
        str(output),
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(output.read_text("utf-8"), newline="")))
    # Events every 12 hours from 2025-09-01 19:30; user2 acts in events 2 and 7.
    assert [(row["sequence"], row["time"][:10]) for row in rows] == [("2", "2025-09-02")]
    assert rows[0]["actor_email"] == "user2@school.example"
    assert f"exported 1 event to {output}\n" in result.stderr


def test_export_needs_a_format(satchel: Satchel) -> None:
    result = satchel("audit", "export")
    assert result.exit_code == 2


def test_export_refuses_a_since_after_until_and_records_nothing(
    satchel: Satchel, runtime: Runtime
) -> None:
    before = len(list(runtime.audit_log.events()))
    result = satchel(
        "audit", "export", "--format", "csv", "--since", "2027-01-01", "--until", "2026-01-01"
    )
    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for '--until': 2026-01-01 is before --since 2027-01-01.\n" in (
        result.output
    )
    assert result.stdout == ""  # not even the header
    assert len(list(runtime.audit_log.events())) == before


def test_export_of_one_day_gives_since_equal_to_until(satchel: Satchel, runtime: Runtime) -> None:
    result = satchel(
        "audit", "export", "--format", "csv", "--since", "2025-09-02", "--until", "2025-09-02"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    # Events every 12 hours from 2025-09-01 19:30: events 2 and 3 fall on 2025-09-02.
    assert [row["sequence"] for row in rows] == ["2", "3"]
