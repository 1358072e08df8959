"""Roster import from OneRoster CSV: the parser on its own, the import on SQLite and
PostgreSQL, and ``satchel roster import`` through click's runner."""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from audit.errors import AuditUnavailable
from audit.events import Action
from folders.actor import Actor
from folders.errors import FoldersError, Forbidden, InvalidInput, NotFound
from folders.grants import GrantStatus
from folders.models import GrantScope, Relationship, Role, Student, StudentStatus
from folders.roster import (
    PersonKind,
    Rejected,
    RosterImport,
    RosterVersion,
    parse_roster,
    read_roster,
)
from folders.runtime import Runtime
from folders.text import clean_text
from tests.support.faults import break_audit_inserts, restore_audit_inserts
from web.cli import cli

FIXTURES = Path(__file__).parent / "roster_fixtures"
V11_HEADER = (
    "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,"
    "givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password"
)
V12_USERS_HEADER = (
    "sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,"
    "middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,"
    "userMasterIdentifier,resourceSourcedIds,preferredGivenName,preferredMiddleName,"
    "preferredFamilyName,primaryOrgSourcedId,pronouns"
)
ROLES_HEADER = (
    "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,"
    "orgSourcedId,userProfileSourcedId"
)
GOOD_STUDENT = "s-1,,,true,,student,,,Ava,Brown,,500001,,,,,03,"


def users_v11(*rows: str) -> dict[str, bytes]:
    return {"users.csv": "\n".join([V11_HEADER, *rows, ""]).encode()}


def copy_fixture(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")


# The parser --------------------------------------------------------------------------------


def test_reads_the_v1_1_fixture() -> None:
    roster = read_roster(FIXTURES / "v1_1")
    assert roster.version is RosterVersion.V1_1
    assert roster.rejected == ()
    assert roster.skipped == 2  # the district org and the teacher
    assert [(s.code, s.name) for s in roster.schools] == [
        ("LES", "Lincoln Elementary School"),
        ("RMS", "Roosevelt Middle School"),
    ]
    people = {p.source_id: p for p in roster.people}
    lucia = people["s-10001"]
    assert (lucia.kind, lucia.district_id, lucia.state_id, lucia.grade) == (
        PersonKind.STUDENT, "100001", "CA1234567", "5"
    )  # fmt: skip
    assert lucia.agent_ids == ("p-20001", "p-20002") and lucia.middle_name == "Isabel"
    assert people["s-10002"].grade == "K"
    assert people["s-10004"].district_id == "s-10004"  # no identifier: the sourcedId
    assert people["s-10005"].family_name == "García Márquez" and people["s-10005"].grade == "7"
    elena = people["p-20001"]
    assert (elena.kind, elena.email, elena.relationship) == (
        PersonKind.GUARDIAN, "elena.lopez@mail.example", Relationship.PARENT
    )  # fmt: skip
    assert people["p-20004"].relationship is Relationship.RELATIVE
    assert not people["p-20004"].enabled
    assert "t-5001" in roster.listed_ids and "t-5001" not in people


def test_reads_the_v1_2_fixture_with_roles() -> None:
    roster = read_roster(FIXTURES / "v1_2")
    assert roster.version is RosterVersion.V1_2
    assert roster.rejected == () and roster.skipped == 2
    people = {p.source_id: p for p in roster.people}
    assert set(people) == {"u-7001", "u-7002", "u-7003", "u-8001", "u-8002", "u-8003"}
    assert people["u-7001"].org_ids == ("cr-hs",) and people["u-7001"].state_id == "TX900111"
    assert people["u-7002"].grade == "6" and people["u-7002"].middle_name == "Layla"
    # The primary role comes first among the orgs, after the primaryOrgSourcedId.
    assert people["u-8001"].org_ids == ("cr-district", "cr-hs", "cr-ms")
    assert people["u-8003"].relationship is Relationship.GUARDIAN


def test_version_comes_from_the_header_without_a_manifest() -> None:
    assert parse_roster(users_v11(GOOD_STUDENT)).version is RosterVersion.V1_1
    files = {
        "users.csv": f"{V12_USERS_HEADER}\nu-1,,,true,,,Ada,Lane,,,,,,,09,,,,,,,,\n".encode(),
        "roles.csv": f"{ROLES_HEADER}\nr-1,,,u-1,primary,student,,,org-1,\n".encode(),
    }
    roster = parse_roster(files)
    assert roster.version is RosterVersion.V1_2 and [p.grade for p in roster.people] == ["9"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "There is no users.csv"),
        ({"users.csv": b""}, "users.csv is empty"),
        ({"users.csv": b"sourcedId,givenName\n"}, "lacks the column familyName"),
        ({"users.csv": b"sourcedId,givenName,familyName\n"}, "neither OneRoster 1.1 nor 1.2"),
        (
            {"users.csv": b"sourcedId,role,givenName,familyName,role\n"},
            "the column 'role' appears twice",
        ),
        (
            {**users_v11(GOOD_STUDENT), "manifest.csv": b"propertyName,value\n"
             b"oneroster.version,1.2\n"},
            "declares OneRoster 1.2 but there is no roles.csv",
        ),
        (
            {**users_v11(GOOD_STUDENT), "manifest.csv": b"propertyName,value\n"
             b"oneroster.version,1.0\n"},
            "declares OneRoster '1.0'",
        ),
        (
            {**users_v11(GOOD_STUDENT), "manifest.csv": b"propertyName,value\n"
             b"oneroster.version,1.1\nfile.users,absent\n"},
            "users.csv is absent",
        ),
        ({"users.csv": b"\xff\xfesourcedId\n"}, "line 1 (the header) is not valid UTF-8"),
    ],
)  # fmt: skip
def test_unreadable_sets_raise_invalid_input(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_roster(files)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("s-2,,,true,,student,,,,Brown,,500002,,,,,03,", "givenName is required"),
        ("s-2,,,true,,student,,,Ava,,,500002,,,,,03,", "familyName is required"),
        (",,,true,,student,,,Ava,Brown,,500002,,,,,03,", "sourcedId is required"),
        ("x-2,,,true,,janitor,,,Sam,Stone,,,,,,,,", "role 'janitor' is not a OneRoster role"),
        ("p-2,,,true,,parent,,,Lee,Brown,,,lee-at-mail,,,,,", "email 'lee-at-mail' is not a valid"),
        ("p-2,,,true,,guardian,,,Kai,Brown,,,,,,,,", "email is required for a guardian"),
        ("s-2,archived,,true,,student,,,Ava,Brown,,2,,,,,03,", "status 'archived' is not"),
        ("s-2,,,maybe,,student,,,Ava,Brown,,2,,,,,03,", "enabledUser 'maybe' is not true or"),
        ("s-2,,,true,,student,,state=9,Ava,Brown,,2,,,,,03,", "userIds 'state=9' is not a list"),
        ("s-2,,,true,,student,,,Ava,Brown,,2,,,,s-2,03,", "agentSourcedIds lists the user"),
        ("s-2,,,true,,student,,,Ava,Brown,,2,,,,s-1,03,", "'s-1' is a student, not a parent"),
        ("s-2,,,true,,student,,,Ava,Brown,," + "9" * 65 + ",,,,,03,", "longer than 64"),
        ("s-2,,,true,,student,,,Ava\x07,Brown,,2,,,,,03,", "givenName contains control"),
        ("s-2,,,true,,student,,,Ava,Brown,,2,,,,,03", "has 17 fields; the header has 18"),
        ('s-2,,,true,,student,,,"Ava"x,Brown,,2,,,,,03,', "not valid CSV"),
        ("s-2,,,true,,student,,,Ava,Brown,,2,,,,,03,\x00", "line 3 contains a NUL byte"),
    ],
)
def test_a_malformed_row_is_rejected_with_its_line_and_reason(row: str, reason: str) -> None:
    roster = parse_roster(users_v11(GOOD_STUDENT, row))
    assert [p.source_id for p in roster.people] == ["s-1"]
    assert len(roster.rejected) == 1
    rejected = roster.rejected[0]
    assert (rejected.file, rejected.line) == ("users.csv", 3)
    assert reason in rejected.reason


def test_invalid_utf8_costs_one_row() -> None:
    data = users_v11(GOOD_STUDENT)["users.csv"] + b"s-2,,,true,,student,,,Ana\xe9,B,,2,,,,,03,\n"
    data += b"s-3,,,true,,student,,,Ana,Brown,,3,,,,,03,\n"
    roster = parse_roster({"users.csv": data})
    assert [p.source_id for p in roster.people] == ["s-1", "s-3"]
    assert roster.rejected == (Rejected("users.csv", 3, "line 3 is not valid UTF-8 text"),)


def test_duplicates_reject_every_row_involved() -> None:
    roster = parse_roster(
        users_v11(
            GOOD_STUDENT,
            "s-9,,,true,,student,,,Ivy,Green,,9,,,,,04,",
            "s-9,,,true,,student,,,Ivan,Green,,10,,,,,04,",
            "p-1,,,true,,parent,,,Lee,Brown,,,family@mail.example,,,s-1,,",
            "p-2,,,true,,parent,,,Kim,Brown,,,Family@Mail.example,,,s-1,,",
            "s-3,,,true,,student,,{state:77},Ann,Park,,11,,,,,04,",
            "s-4,,,true,,student,,{state:77},Ben,Park,,12,,,,,04,",
        )
    )
    assert [p.source_id for p in roster.people] == ["s-1"]
    assert [(r.line, r.reason) for r in roster.rejected] == [
        (3, "sourcedId 's-9' is also on line 4"),
        (4, "sourcedId 's-9' is also on line 3"),
        (5, "the email is also used on line 6"),
        (6, "the email is also used on line 5"),
        (7, "the state id is also used on line 8"),
        (8, "the state id is also used on line 7"),
    ]


def test_line_numbers_count_quoted_line_breaks_and_blank_lines() -> None:
    roster = parse_roster(
        users_v11(
            'p-1,,,true,,parent,,,"Mary\nAnn",Brown,,,mary@mail.example,,,,,',
            "",
            "p-2,,,true,,parent,,,Kai,Brown,,,,,,,,",
        )
    )
    assert [p.given_name for p in roster.people] == ["Mary Ann"]
    assert [r.line for r in roster.rejected] == [5]


def test_v1_2_role_problems() -> None:
    users = "\n".join(
        [
            V12_USERS_HEADER,
            "u-1,,,true,,,Ada,Lane,,,,,,,09,,,,,,,,",
            "u-2,,,true,,,Bo,Lane,,,bo@mail.example,,,,,,,,,,,,",
            "u-3,,,true,,,Cy,Lane,,,,,,,10,,,,,,,,",
            "u-4,,,true,,,Di,Lane,,,,,,,11,,,,,,,,",
            "u-5,tobedeleted,,true,,,Ed,Lane,,,,,,,12,,,,,,,,",
            "",
        ]
    )
    roles = "\n".join(
        [
            ROLES_HEADER,
            "r-1,,,u-1,primary,student,,,org-1,",
            "r-2,,,u-2,primary,parent,,,org-1,",
            "r-3,,,u-2,secondary,student,,,org-1,",
            "r-4,,,u-9,primary,student,,,org-1,",
            "r-5,,,u-3,main,student,,,org-1,",
            "r-6,,,u-4,primary,wizard,,,org-1,",
            "r-7,tobedeleted,,u-5,primary,student,,,org-1,",
            "",
        ]
    )
    roster = parse_roster({"users.csv": users.encode(), "roles.csv": roles.encode()})
    assert [p.source_id for p in roster.people] == ["u-1", "u-5"]
    assert roster.people[1].withdrawn
    assert [(r.file, r.line, r.reason) for r in roster.rejected] == [
        ("roles.csv", 5, "userSourcedId 'u-9' is not in users.csv"),
        ("roles.csv", 6, "roleType 'main' is not primary or secondary"),
        ("roles.csv", 7, "role 'wizard' is not a OneRoster role"),
        ("users.csv", 3, "roles.csv gives this user both student and guardian roles "
                         "(lines 3, 4)"),
        ("users.csv", 4, "no role for this user in roles.csv"),
        ("users.csv", 5, "no role for this user in roles.csv"),
    ]  # fmt: skip


def test_reasons_escape_control_characters() -> None:
    roster = parse_roster(users_v11("x-1,,,true,,\x1b[2Jstudent,,,Sam,Stone,,,,,,,,"))
    (rejected,) = roster.rejected
    assert "\x1b" not in rejected.reason and "\\x1b[2Jstudent" in rejected.reason


# Fuzzing the parser: any input ends in a Roster or one of the project's own errors.

_TOKENS = st.sampled_from(
    ["", "s-1", "s-2", "p-1", "student", "parent", "guardian", "relative", "teacher",
     "tobedeleted", "true", "false", "Ada", "x@mail.example", "{state:1}", "05", "KG",
     '"', '""', ",", "\n", "\r\n", "{", ":", "\x00", "é", " ", "s-1,p-1", "\ud7ff"]
)  # fmt: skip
_FIELD = st.one_of(_TOKENS, st.text(max_size=12), st.lists(_TOKENS, max_size=4).map("".join))


def _raw_csv(header: str) -> st.SearchStrategy[bytes]:
    rows = st.lists(st.lists(_FIELD, max_size=20).map(",".join), max_size=8)
    encoded = rows.map(lambda lines: "\n".join([header, *lines]).encode("utf-8", "replace"))
    return st.one_of(encoded, st.binary(max_size=300), encoded.map(lambda b: b[: len(b) // 2]))


@settings(max_examples=200)
@given(
    users=_raw_csv(V11_HEADER) | _raw_csv(V12_USERS_HEADER),
    roles=st.none() | _raw_csv(ROLES_HEADER),
    orgs=st.none() | _raw_csv("sourcedId,status,dateLastModified,name,type,identifier"),
    manifest=st.none() | st.sampled_from([b"propertyName,value\noneroster.version,1.1\n",
                                          b"propertyName,value\noneroster.version,1.2\n",
                                          b"propertyName\n\xff", b""]),
)  # fmt: skip
def test_fuzzed_files_never_crash_the_parser(
    users: bytes, roles: bytes | None, orgs: bytes | None, manifest: bytes | None
) -> None:
    files = {"users.csv": users}
    for name, data in (("roles.csv", roles), ("orgs.csv", orgs), ("manifest.csv", manifest)):
        if data is not None:
            files[name] = data
    try:
        roster = parse_roster(files)
    except FoldersError:
        return
    ids = [p.source_id for p in roster.people]
    assert len(ids) == len(set(ids)) and all(ids)
    for person in roster.people:
        assert person.given_name and person.family_name
        assert (person.email is not None) == (person.kind is PersonKind.GUARDIAN)
        assert person.kind is PersonKind.GUARDIAN or 0 < len(person.district_id or "") <= 64
    assert all(r.line >= 1 and r.reason for r in roster.rejected)


_NAME = st.text(st.characters(codec="utf-8"), max_size=30)
_ROLE = st.sampled_from(["student", "parent", "relative", "teacher", "janitor", ""])
_EMAIL = st.sampled_from(["", "a@mail.example", "b@mail.example", "not-an-email"])


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4", "u5"]), _ROLE, _NAME, _NAME,
                       _EMAIL), min_size=1, max_size=6)
)  # fmt: skip
def test_every_well_quoted_row_is_imported_rejected_or_skipped_exactly_once(
    rows: list[tuple[str, str, str, str, str]],
) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(V11_HEADER.split(","))
    starts, line = [], 2
    for sid, role, given_name, family, email in rows:
        before = out.tell()
        writer.writerow([sid, "", "", "true", "", role, "", "", given_name, family, "", "",
                         email, "", "", "", "", ""])  # fmt: skip
        starts.append(line)
        line += len(out.getvalue()[before:].encode().splitlines())
    roster = parse_roster({"users.csv": out.getvalue().encode()})
    accepted = {p.line: p for p in roster.people}
    rejected = Counter(r.line for r in roster.rejected)
    assert len(roster.people) + len(roster.rejected) + roster.skipped == len(rows)
    for start, (sid, role, given_name, family, _) in zip(starts, rows, strict=True):
        assert (start in accepted) + rejected[start] <= 1
        if start in accepted:
            person = accepted[start]
            assert person.source_id == sid
            assert person.given_name == clean_text(given_name, "g", max_length=100)
            assert person.family_name == clean_text(family, "f", max_length=100)
            assert person.kind is (PersonKind.STUDENT if role == "student" else
                                   PersonKind.GUARDIAN)  # fmt: skip


# The import (SQLite and PostgreSQL) ---------------------------------------------------------


def account(runtime: Runtime, email: str, role: Role) -> Actor:
    # No password: Argon2 hashing would only slow these tests down.
    runtime.accounts.add_user(Actor.operator(), email, role)
    return runtime.accounts.acting_as(email)


def registrar(runtime: Runtime) -> Actor:
    return account(runtime, "registrar@school.example", Role.REGISTRAR)


def importer(runtime: Runtime) -> RosterImport:
    return RosterImport(runtime.engine, runtime.audit_log, runtime.clock)


def actions(runtime: Runtime) -> list[Action]:
    """The action of every audit event not made by the test's own setup, oldest first.

    Setup creates accounts as the server operator; imports act as a registrar.
    """
    events = reversed(runtime.audit_log.query(per_page=500).items)
    return [e.event.action for e in events if e.event.actor_role != "operator"]


def test_v1_1_import_creates_schools_students_guardians_and_links(runtime: Runtime) -> None:
    actor = registrar(runtime)
    report = importer(runtime).import_directory(actor, FIXTURES / "v1_1")
    assert (report.created, report.updated, report.unchanged, report.skipped) == (11, 0, 0, 2)
    assert (report.links_created, report.links_ended, report.rejected) == (5, 0, ())
    students = runtime.students
    lucia = students.get_by_district_id(actor, "100001")
    assert (lucia.given_name, lucia.middle_name, lucia.family_name) == ("Lucia", "Isabel", "Lopez")
    assert (lucia.state_id, lucia.grade, lucia.school_name) == (
        "CA1234567", "5", "Lincoln Elementary School"
    )  # fmt: skip
    assert students.get_by_district_id(actor, "300003").school_name == "Roosevelt Middle School"
    jonah = students.get_by_district_id(actor, "s-10004")
    assert [(g.email, g.relationship) for g in students.list_guardians(actor, lucia.id)] == [
        ("david.lopez@mail.example", Relationship.PARENT),
        ("elena.lopez@mail.example", Relationship.PARENT),
    ]
    (sunhee,) = students.list_guardians(actor, jonah.id)
    assert sunhee.relationship is Relationship.RELATIVE
    guardians = {u.email: u for u in runtime.accounts.list_users(Actor.operator(), Role.GUARDIAN)}
    assert len(guardians) == 4 and not any(u.has_password for u in guardians.values())
    assert not guardians["sunhee.kim@mail.example"].active  # enabledUser false
    teachers = runtime.accounts.list_users(Actor.operator(), Role.REGISTRAR)
    assert [u.email for u in teachers] == ["registrar@school.example"]  # staff are not imported
    counts = Counter(actions(runtime))
    assert counts == {
        Action.STUDENT_CREATE: 5,
        Action.USER_CREATE: 4,
        Action.GUARDIAN_LINK: 5,
        Action.ROSTER_IMPORT: 1,
    }
    summary = runtime.audit_log.query(per_page=1).items[0].event
    assert summary.action is Action.ROSTER_IMPORT and summary.actor_email == actor.email
    assert summary.detail is not None and "11 created" in summary.detail


def test_importing_the_same_directory_again_changes_nothing(runtime: Runtime) -> None:
    actor = registrar(runtime)
    importer(runtime).import_directory(actor, FIXTURES / "v1_1")
    before = len(actions(runtime))
    again = importer(runtime).import_directory(actor, FIXTURES / "v1_1")
    assert (again.created, again.updated, again.unchanged, again.links_created) == (0, 0, 11, 0)
    assert actions(runtime)[before:] == [Action.ROSTER_IMPORT]


def test_progress_is_reported_after_every_row_and_every_link(runtime: Runtime) -> None:
    calls: list[tuple[str, int, int]] = []
    importer(runtime).import_directory(
        registrar(runtime), FIXTURES / "v1_1", progress=lambda *call: calls.append(call)
    )
    # 2 schools and 9 people (the teacher and the district are skipped), then 5 links.
    rows = [("rows", done, 11) for done in range(1, 12)]
    assert calls == rows + [("links", done, 5) for done in range(1, 6)]


def test_an_audit_failure_stops_the_import_and_takes_back_only_its_batch(
    runtime: Runtime,
) -> None:
    """Rows are committed in batches together with their events. When the log refuses
    an event its whole batch is rolled back, earlier batches stay stored and audited,
    and importing again finishes the job with one event per change."""
    actor = registrar(runtime)
    in_pairs = RosterImport(runtime.engine, runtime.audit_log, runtime.clock, batch_rows=2)
    break_audit_inserts(runtime.engine, detail_like="%(sourcedId s-10004)%")
    with pytest.raises(AuditUnavailable):
        in_pairs.import_directory(actor, FIXTURES / "v1_1")
    with runtime.engine.connect() as connection:
        stored = set(connection.scalars(select(Student.district_id)))
    # Batches: the 2 schools; s-10001 and s-10002; s-10003 and s-10004, rolled back
    # whole although only the event of s-10004 was refused.
    assert stored == {"100001", "100002"}
    assert Counter(actions(runtime)) == {Action.STUDENT_CREATE: 2}
    assert not runtime.accounts.list_users(Actor.operator(), Role.GUARDIAN)

    restore_audit_inserts(runtime.engine)
    report = in_pairs.import_directory(actor, FIXTURES / "v1_1")
    assert (report.created, report.unchanged, report.links_created) == (7, 4, 5)
    assert Counter(actions(runtime)) == {
        Action.STUDENT_CREATE: 5,
        Action.USER_CREATE: 4,
        Action.GUARDIAN_LINK: 5,
        Action.ROSTER_IMPORT: 1,
    }


def test_changed_names_and_grades_are_audited_updates(runtime: Runtime, tmp_path: Path) -> None:
    actor = registrar(runtime)
    roster = copy_fixture(tmp_path, "v1_1")
    importer(runtime).import_directory(actor, roster)
    edit(roster / "users.csv", ',"p-20001,p-20002",05,', ',"p-20001,p-20002",06,')
    edit(roster / "users.csv", "dlopez,,David,Lopez", "dlopez,,Dave,Lopez")
    before = len(actions(runtime))
    report = importer(runtime).import_directory(actor, roster)
    assert (report.created, report.updated, report.unchanged) == (0, 2, 9)
    assert runtime.students.get_by_district_id(actor, "100001").grade == "6"
    events = [e.event for e in reversed(runtime.audit_log.query(per_page=3).items)]
    assert [e.action for e in events] == [
        Action.STUDENT_UPDATE, Action.USER_UPDATE, Action.ROSTER_IMPORT
    ]  # fmt: skip
    assert events[0].detail == "from roster: grade"
    assert events[1].detail == "david.lopez@mail.example (guardian) from roster: display_name"
    assert len(actions(runtime)) == before + 3


def test_links_never_undo_a_registrars_restriction_or_unlinking(
    runtime: Runtime, tmp_path: Path
) -> None:
    actor = registrar(runtime)
    roster = copy_fixture(tmp_path, "v1_1")
    importer(runtime).import_directory(actor, roster)
    lucia = runtime.students.get_by_district_id(actor, "100001")
    runtime.students.restrict_guardian(actor, lucia.id, "elena.lopez@mail.example", "Court order")
    runtime.students.unlink_guardian(actor, lucia.id, "david.lopez@mail.example")
    # David now also lists Mateo: that new link is made, the others are left alone.
    edit(roster / "users.csv", "555-0102,s-10001,", '555-0102,"s-10001,s-10002",')
    report = importer(runtime).import_directory(actor, roster)
    assert (report.links_created, report.updated) == (1, 0)
    links = {g.email: g for g in runtime.students.list_guardians(actor, lucia.id)}
    assert links["elena.lopez@mail.example"].restricted
    assert links["elena.lopez@mail.example"].restriction_reason == "Court order"
    assert links["david.lopez@mail.example"].ended_at is not None
    mateo = runtime.students.get_by_district_id(actor, "100002")
    emails = {g.email for g in runtime.students.list_guardians(actor, mateo.id)}
    assert emails == {"elena.lopez@mail.example", "david.lopez@mail.example"}


def test_tobedeleted_deactivates_and_ends_but_never_deletes(
    runtime: Runtime, tmp_path: Path
) -> None:
    actor = registrar(runtime)
    roster = copy_fixture(tmp_path, "v1_1")
    importer(runtime).import_directory(actor, roster)
    original = (roster / "users.csv").read_text(encoding="utf-8")
    edit(roster / "users.csv", "s-10002,,,", "s-10002,tobedeleted,2025-06-30T00:00:00Z,")
    edit(roster / "users.csv", "p-20001,,,", "p-20001,tobedeleted,2025-06-30T00:00:00Z,")
    report = importer(runtime).import_directory(actor, roster)
    assert (report.updated, report.links_ended, report.links_created) == (2, 2, 0)
    mateo = runtime.students.get_by_district_id(actor, "100002")
    assert mateo.status is StudentStatus.INACTIVE
    elena = [g for g in runtime.students.list_guardians(actor, mateo.id)]
    assert [(g.email, g.ended_at is not None) for g in elena] == [
        ("elena.lopez@mail.example", True)
    ]
    accounts = {u.email: u for u in runtime.accounts.list_users(Actor.operator(), Role.GUARDIAN)}
    assert not accounts["elena.lopez@mail.example"].active
    assert actions(runtime)[-5:] == [
        Action.STUDENT_UPDATE, Action.USER_DISABLE, Action.GUARDIAN_UNLINK,
        Action.GUARDIAN_UNLINK, Action.ROSTER_IMPORT,
    ]  # fmt: skip
    # The active rows again: nothing is switched back on or re-linked by the roster.
    (roster / "users.csv").write_text(original, encoding="utf-8")
    again = importer(runtime).import_directory(actor, roster)
    assert (again.created, again.updated, again.links_created) == (0, 0, 0)
    accounts = {u.email: u for u in runtime.accounts.list_users(Actor.operator(), Role.GUARDIAN)}
    assert not accounts["elena.lopez@mail.example"].active
    assert runtime.students.get_by_district_id(actor, "100002").status is StudentStatus.INACTIVE


def test_a_withdrawn_guardian_loses_the_shares_of_the_links_it_ends(
    runtime: Runtime, tmp_path: Path
) -> None:
    actor = registrar(runtime)
    roster = copy_fixture(tmp_path, "v1_1")
    importer(runtime).import_directory(actor, roster)
    mateo = runtime.students.get_by_district_id(actor, "100002")
    shared = runtime.grants.grant(actor, "elena.lopez@mail.example", mateo.id, GrantScope.FOLDER)
    edit(roster / "users.csv", "p-20001,,,", "p-20001,tobedeleted,2025-06-30T00:00:00Z,")
    report = importer(runtime).import_directory(actor, roster)
    assert report.links_ended == 2
    assert runtime.grants.list_for_student(actor, mateo.id) == []
    (revoked,) = runtime.grants.list_for_student(actor, mateo.id, include_inactive=True)
    assert (revoked.id, revoked.status) == (shared.id, GrantStatus.REVOKED)
    assert Action.GRANT_REVOKE in actions(runtime)[-5:]


def test_rejected_rows_are_listed_and_the_rest_imported(runtime: Runtime) -> None:
    actor = registrar(runtime)
    report = importer(runtime).import_directory(actor, FIXTURES / "v1_1_errors")
    assert (report.created, report.links_created) == (2, 1)
    assert [(r.file, r.line) for r in report.rejected] == [("users.csv", n) for n in range(3, 10)]
    assert report.rejected[-1].reason == (
        "agentSourcedIds: 'p-404' is neither in users.csv nor in Satchel"
    )
    with pytest.raises(NotFound):
        runtime.students.get_by_district_id(actor, "500011")
    ava = runtime.students.get_by_district_id(actor, "500001")
    assert [g.email for g in runtime.students.list_guardians(actor, ava.id)] == [
        "robin.brown@mail.example"
    ]
    assert Counter(actions(runtime)) == {
        Action.STUDENT_CREATE: 1, Action.USER_CREATE: 1, Action.GUARDIAN_LINK: 1,
        Action.ROSTER_IMPORT: 1,
    }  # fmt: skip


def test_database_conflicts_reject_only_their_row(runtime: Runtime, tmp_path: Path) -> None:
    actor = registrar(runtime)
    # Entered by hand before the first import: adopted (same district id, same email).
    local = runtime.students.add_student(actor, "100002", "Mateo", "Lopez")
    elena = runtime.accounts.add_user(Actor.operator(), "elena.lopez@mail.example", Role.GUARDIAN)
    runtime.students.add_student(actor, "LOCAL-9", "Other", "Child", state_id="CA1234567")
    roster = copy_fixture(tmp_path, "v1_1")
    edit(roster / "users.csv", "david.lopez@mail.example", "Registrar@School.example")
    dry = importer(runtime).import_directory(actor, roster, dry_run=True)
    report = importer(runtime).import_directory(actor, roster)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (3, "the state id 'CA1234567' belongs to another student (LOCAL-9)"),
        (9, "this matches the registrar account registrar@school.example; an import never "
            "changes staff accounts"),
    ]  # fmt: skip
    assert (report.created, report.updated, report.links_created) == (7, 2, 3)
    counts = (dry.created, dry.updated, dry.unchanged, dry.links_created, dry.rejected)
    assert counts == (7, 2, 0, 3, report.rejected)
    mateo = runtime.students.get_by_district_id(actor, "100002")
    assert mateo.id == local.id and mateo.grade == "K"
    (link,) = runtime.students.list_guardians(actor, mateo.id)
    assert (link.guardian_id, link.display_name) == (elena.id, "Elena Lopez")
    with pytest.raises(NotFound):
        runtime.students.get_by_district_id(actor, "100001")
    staff = runtime.accounts.acting_as("registrar@school.example")
    assert staff.role is Role.REGISTRAR and staff.user_id == actor.user_id
    assert Counter(actions(runtime))[Action.STUDENT_CREATE] == 2 + 3  # two by hand, three here


def test_references_to_people_from_an_earlier_import(runtime: Runtime, tmp_path: Path) -> None:
    actor = registrar(runtime)
    importer(runtime).import_directory(actor, FIXTURES / "v1_1")
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / "users.csv").write_text(
        "\n".join([
            V11_HEADER,
            "s-10006,,,true,org-s-200,student,,,Ruth,Okafor,,300006,,,,p-20003,06,",
            "s-10007,,,true,org-s-200,student,,,Sam,Okafor,,300007,,,,p-20009,06,",
            "s-10008,,,true,org-s-200,student,,,Tom,Okafor,,300008,,,,s-10001,06,",
            "",
        ]),
        encoding="utf-8",
    )  # fmt: skip
    report = importer(runtime).import_directory(actor, delta)
    assert (report.created, report.links_created) == (1, 1)
    assert [r.reason for r in report.rejected] == [
        "agentSourcedIds: 'p-20009' is neither in users.csv nor in Satchel",
        "agentSourcedIds: 's-10001' is a student in Satchel",
    ]
    ruth = runtime.students.get_by_district_id(actor, "300006")
    assert ruth.school_name == "Roosevelt Middle School"
    (grace,) = runtime.students.list_guardians(actor, ruth.id)
    # The file does not say how an earlier-imported guardian is related.
    assert (grace.email, grace.relationship) == ("grace.okafor@mail.example", Relationship.OTHER)


def test_dry_run_counts_like_the_real_run_and_writes_nothing(
    runtime: Runtime, tmp_path: Path
) -> None:
    actor = registrar(runtime)
    roster = copy_fixture(tmp_path, "v1_1")
    before = actions(runtime)
    dry = importer(runtime).import_directory(actor, roster, dry_run=True)
    assert dry.dry_run and actions(runtime) == before
    assert runtime.students.find_students(actor, "").total == 0
    real = importer(runtime).import_directory(actor, roster)
    assert (dry.created, dry.links_created, dry.skipped) == (real.created, real.links_created, 2)
    edit(roster / "users.csv", "dlopez,,David,Lopez", "dlopez,,Dave,Lopez")
    edit(
        roster / "users.csv",
        "grace.okafor@mail.example,,,,,",
        "grace.okafor@mail.example,,,s-10004,,",
    )
    dry = importer(runtime).import_directory(actor, roster, dry_run=True)
    assert (dry.created, dry.updated, dry.unchanged, dry.links_created) == (0, 1, 10, 1)
    real = importer(runtime).import_directory(actor, roster)
    assert (real.created, real.updated, real.unchanged, real.links_created) == (0, 1, 10, 1)


def test_v1_2_import(runtime: Runtime) -> None:
    actor = registrar(runtime)
    report = importer(runtime).import_directory(actor, FIXTURES / "v1_2")
    assert report.version is RosterVersion.V1_2
    assert (report.created, report.skipped, report.links_created, report.rejected) == (8, 2, 4, ())
    amir = runtime.students.get_by_district_id(actor, "7001")
    assert (amir.state_id, amir.grade, amir.school_name) == (
        "TX900111", "10", "Cedar Ridge High School"
    )  # fmt: skip
    noor = runtime.students.get_by_district_id(actor, "7002")
    assert {g.email for g in runtime.students.list_guardians(actor, noor.id)} == {
        "fatima.hassan@mail.example", "omar.hassan@mail.example"
    }  # fmt: skip
    ben = runtime.students.get_by_district_id(actor, "7003")
    (patricia,) = runtime.students.list_guardians(actor, ben.id)
    assert patricia.relationship is Relationship.GUARDIAN
    again = importer(runtime).import_directory(actor, FIXTURES / "v1_2")
    assert (again.created, again.updated, again.links_created) == (0, 0, 0)


def test_only_registrars_import(runtime: Runtime) -> None:
    for role in (Role.GUARDIAN, Role.COMPLIANCE, Role.ADMIN):
        actor = account(runtime, f"{role.value}@school.example", role)
        with pytest.raises(Forbidden):
            importer(runtime).import_directory(actor, FIXTURES / "v1_1")
        with pytest.raises(Forbidden):
            importer(runtime).apply(actor, read_roster(FIXTURES / "v1_1"), dry_run=True)
    assert runtime.students.find_students(registrar(runtime), "").total == 0
    # Nothing imported, and every refusal recorded: the policy's reason, by whom.
    events = [e.event for e in runtime.audit_log.query(per_page=500).items]
    refusals = [e for e in events if e.actor_role != "operator"]
    assert [e.action for e in refusals] == [Action.ACCESS_DENIED] * 6
    assert {e.detail for e in refusals} == {"manage_folder: role_not_permitted"}
    assert sorted(e.actor_role for e in refusals) == sorted(["guardian", "compliance", "admin"] * 2)


# The command line ---------------------------------------------------------------------------


@pytest.fixture
def satchel(tmp_path: Path, database_url: str) -> CliRunner:
    runner = CliRunner(
        env={"SATCHEL_DATA_DIR": str(tmp_path / "data"), "SATCHEL_DATABASE_URL": database_url}
    )
    assert runner.invoke(cli, ["init"]).exit_code == 0
    added = runner.invoke(cli, ["user", "add", "reg@school.example", "--role", "registrar"])
    assert added.exit_code == 0, added.output
    return runner


def roster_import(runner: CliRunner, directory: Path, *options: str) -> Result:
    return runner.invoke(
        cli, ["roster", "import", str(directory), "--as", "reg@school.example", *options]
    )


def test_cli_imports_and_is_idempotent(satchel: CliRunner) -> None:
    dry = roster_import(satchel, FIXTURES / "v1_1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "(dry run: nothing was changed)" in dry.output
    first = roster_import(satchel, FIXTURES / "v1_1")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0] == f"OneRoster 1.1 roster from {FIXTURES / 'v1_1'}"
    assert [line.split() for line in lines[1:7]] == [
        ["created", "11"], ["updated", "0"], ["unchanged", "0"], ["skipped", "2"],
        ["rejected", "0"], ["links", "5", "created,", "0", "ended"],
    ]  # fmt: skip
    second = roster_import(satchel, FIXTURES / "v1_1")
    assert second.exit_code == 0
    assert [line.split() for line in second.output.splitlines()[1:4]] == [
        ["created", "0"], ["updated", "0"], ["unchanged", "11"]
    ]  # fmt: skip


def test_cli_lists_rejected_rows_and_exits_1(satchel: CliRunner) -> None:
    result = roster_import(satchel, FIXTURES / "v1_1_errors")
    assert result.exit_code == 1
    assert "Rejected rows (nothing was stored for them):" in result.output
    assert "  users.csv:3: givenName is required" in result.output
    assert "  users.csv:4: role 'janitor' is not a OneRoster role" in result.output
    assert "  users.csv:9: agentSourcedIds: 'p-404' is neither" in result.output


def test_cli_errors(satchel: CliRunner, tmp_path: Path) -> None:
    missing = roster_import(satchel, tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = roster_import(satchel, empty)
    assert nothing.exit_code == 1 and "There is no users.csv" in nothing.output
    satchel.invoke(cli, ["user", "add", "g@home.example", "--role", "guardian"])
    refused = satchel.invoke(
        cli, ["roster", "import", str(FIXTURES / "v1_1"), "--as", "g@home.example"]
    )
    assert refused.exit_code == 1 and "Only registrars import rosters." in refused.output


@pytest.mark.parametrize("command", [["roster"], ["roster", "import"]])
def test_roster_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output
