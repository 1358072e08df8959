"""Roster import from IMS OneRoster CSV: v1.1 (``users.csv``) and v1.2 (``users.csv`` with
``roles.csv``), plus ``orgs.csv`` schools and ``manifest.csv`` when present.

Two halves. :func:`parse_roster` turns the files' bytes into a :class:`Roster` of checked
rows; it touches no database, and every malformed row becomes a :class:`Rejected` with its
file, line and reason instead of an exception. :class:`RosterImport` writes a roster into
SQL, one transaction per row (a bad row never leaves half a student), auditing every
student, account and link it creates or changes. ``docs/roster-import.md`` documents the
mapping from OneRoster fields to Satchel.
"""

from __future__ import annotations

import codecs
import csv
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.events import Action, Event
from audit.log import AuditLog
from folders.accounts import normalize_email
from folders.actor import Actor
from folders.auditing import event_for, require
from folders.errors import InvalidInput
from folders.grants import GUARDIANSHIP_ENDED, revoke_guardian_grants
from folders.models import Guardianship, Relationship, Role, School, Student, StudentStatus, User
from folders.policy import Permission
from folders.text import clean_text

USERS = "users.csv"
ROLES = "roles.csv"
ORGS = "orgs.csv"
MANIFEST = "manifest.csv"


class RosterVersion(StrEnum):
    V1_1 = "1.1"
    V1_2 = "1.2"


class PersonKind(StrEnum):
    STUDENT = "student"
    GUARDIAN = "guardian"


@dataclass(frozen=True)
class Rejected:
    """A row that was not imported: where it is and why (safe to show the registrar)."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True)
class RosterSchool:
    """An ``orgs.csv`` row of type ``school``."""

    file: str
    line: int
    source_id: str
    code: str
    name: str
    withdrawn: bool


@dataclass(frozen=True)
class RosterPerson:
    """A checked ``users.csv`` row for a student or a parent, guardian or relative.

    ``withdrawn``: the row is ``tobedeleted`` (or every role it had ended), so the
    person is to be deactivated. ``agent_ids`` are the sourcedIds of the other side of
    the person's guardian links; ``org_ids`` the orgs, most relevant first.
    """

    file: str
    line: int
    source_id: str
    kind: PersonKind
    relationship: Relationship | None
    withdrawn: bool
    enabled: bool
    given_name: str
    middle_name: str | None
    family_name: str
    district_id: str | None
    state_id: str | None
    grade: str | None
    email: str | None
    org_ids: tuple[str, ...]
    agent_ids: tuple[str, ...]

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


@dataclass(frozen=True)
class Roster:
    """What :func:`parse_roster` found. ``listed_ids`` holds every sourcedId that
    appears in ``users.csv``, imported or not, so a reference to a rejected or skipped
    row is not mistaken for a reference to nothing."""

    version: RosterVersion
    schools: tuple[RosterSchool, ...]
    people: tuple[RosterPerson, ...]
    skipped: int
    rejected: tuple[Rejected, ...]
    listed_ids: frozenset[str]


@dataclass(frozen=True)
class ImportReport:
    """Counts of ``users.csv`` and ``orgs.csv`` rows by what happened to them.

    ``skipped`` rows are valid but describe what Satchel does not hold (teachers and
    other staff, districts and other non-school orgs).
    """

    version: RosterVersion
    dry_run: bool
    created: int
    updated: int
    unchanged: int
    skipped: int
    links_created: int
    links_ended: int
    rejected: tuple[Rejected, ...]

    def summary(self) -> str:
        return (
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.skipped} skipped, {len(self.rejected)} rejected; "
            f"{self.links_created} links created, {self.links_ended} ended"
        )


# Parsing ---------------------------------------------------------------------------------

_USER_COLUMNS = (
    "sourcedId", "status", "dateLastModified", "enabledUser", "orgSourcedIds", "role",
    "username", "userIds", "givenName", "familyName", "middleName", "identifier", "email",
    "sms", "phone", "agentSourcedIds", "grades", "password", "userMasterIdentifier",
    "resourceSourcedIds", "preferredGivenName", "preferredMiddleName", "preferredFamilyName",
    "primaryOrgSourcedId", "pronouns",
)  # fmt: skip
_ROLE_COLUMNS = (
    "sourcedId", "status", "dateLastModified", "userSourcedId", "roleType", "role",
    "beginDate", "endDate", "orgSourcedId", "userProfileSourcedId",
)  # fmt: skip
_ORG_COLUMNS = (
    "sourcedId", "status", "dateLastModified", "name", "type", "identifier", "parentSourcedId",
)  # fmt: skip
# Some v1.2 exporters write the REST field name instead of the CSV column name.
_ALIASES = {"primaryorg": "primaryOrgSourcedId"}

_STUDENT_ROLE = "student"
_GUARDIAN_ROLES = {
    "parent": Relationship.PARENT,
    "guardian": Relationship.GUARDIAN,
    "relative": Relationship.RELATIVE,
}
# Valid OneRoster roles (v1.1 and v1.2) that Satchel does not import: skipped, not rejected.
_STAFF_ROLES = frozenset(
    {
        "administrator", "aide", "counselor", "districtadministrator", "principal",
        "proctor", "siteadministrator", "systemadministrator", "teacher",
    }
)  # fmt: skip
_ROLE_TYPES = frozenset({"primary", "secondary"})
# OneRoster 1.0 also had "inactive"; both mean the record is going away.
_WITHDRAWN = frozenset({"tobedeleted", "inactive"})
_STATUSES = _WITHDRAWN | {"", "active"}
_STATE_ID_TYPES = frozenset({"state", "stateid"})
_USER_ID = re.compile(r"\{([^{}:]*):([^{}]*)\}")
_MAX_SOURCED_ID = 255
_MAX_CODE = 64  # district id, state id, school code
_MAX_NAME = 100
_MAX_GRADE = 16


class _RowError(Exception):
    """Why one row cannot be imported; always caught and turned into a Rejected."""


def _shown(value: str, limit: int = 60) -> str:
    """A file value quoted for a reason: cut short and with control characters escaped.

    SECURITY: reasons are printed on terminals and pages; ``repr`` escapes the control
    and formatting characters that could rewrite what a registrar sees.
    """
    return repr(value if len(value) <= limit else value[:limit] + "…")


@dataclass(frozen=True)
class _Row:
    file: str
    line: int
    values: Mapping[str, str]

    def get(self, column: str) -> str:
        return self.values.get(column, "").strip()


@dataclass(frozen=True)
class _Table:
    name: str
    columns: frozenset[str]
    rows: tuple[_Row, ...]
    rejected: tuple[Rejected, ...]


def _decode_lines(data: bytes) -> tuple[list[str], dict[int, str]]:
    """Lines of ``data`` as text, and what is wrong with the damaged ones (by line number).

    Lines are decoded one by one, so a bad byte costs one row, not the whole file (no
    UTF-8 sequence contains a line break byte, so splitting first is safe).
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    texts: list[str] = []
    damaged: dict[int, str] = {}
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            damaged[number] = "is not valid UTF-8 text"
            text = raw.decode("utf-8", "replace")
        if "\x00" in text:
            damaged.setdefault(number, "contains a NUL byte")
            text = text.replace("\x00", "\N{REPLACEMENT CHARACTER}")
        texts.append(text)
    return texts, damaged


def _read_table(name: str, data: bytes, known: Sequence[str], required: Sequence[str]) -> _Table:
    """Rows of one CSV file keyed by canonical column names (matched case-insensitively).

    Raises InvalidInput for problems with the file as a whole (empty, bad header, a
    required column missing); a bad record is rejected on its own and reading goes on.
    """
    texts, damaged = _decode_lines(data)
    canonical = {column.lower(): column for column in known} | _ALIASES
    reader = csv.reader(texts, strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
    rejected: list[Rejected] = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            if header is None:
                raise InvalidInput(
                    f"{name} line {start}: the header is not valid CSV ({e})."
                ) from None
            rejected.append(Rejected(name, start, f"not valid CSV: {e}"))
            continue
        if not any(f.strip() for f in fields):
            continue  # blank line
        broken = sorted(n for n in range(start, reader.line_num + 1) if n in damaged)
        if header is None:
            if broken:
                raise InvalidInput(f"{name} line {broken[0]} (the header) {damaged[broken[0]]}.")
            header = [canonical.get(f.strip().lower(), f.strip()) for f in fields]
            _check_header(name, start, header, required)
            continue
        if broken:
            rejected.append(Rejected(name, start, f"line {broken[0]} {damaged[broken[0]]}"))
        elif len(fields) != len(header):
            rejected.append(
                Rejected(name, start, f"has {len(fields)} fields; the header has {len(header)}")
            )
        else:
            rows.append(_Row(name, start, dict(zip(header, fields, strict=True))))
    if header is None:
        raise InvalidInput(f"{name} is empty: it has no header line.")
    return _Table(name, frozenset(header), tuple(rows), tuple(rejected))


def _check_header(name: str, line: int, header: list[str], required: Sequence[str]) -> None:
    seen: set[str] = set()
    for column in header:
        if column in seen and column:  # unnamed columns (a trailing comma) are ignored
            raise InvalidInput(f"{name} line {line}: the column {_shown(column)} appears twice.")
        seen.add(column)
    missing = [column for column in required if column not in seen]
    if missing:
        raise InvalidInput(f"{name} line {line}: the header lacks the column {missing[0]}.")


def _read_manifest(data: bytes) -> dict[str, str]:
    """``manifest.csv`` properties; InvalidInput if it is not a propertyName,value table."""
    table = _read_table(MANIFEST, data, ("propertyName", "value"), ("propertyName", "value"))
    if table.rejected:
        first = table.rejected[0]
        raise InvalidInput(f"{MANIFEST} line {first.line}: {first.reason}.")
    properties: dict[str, str] = {}
    for row in table.rows:
        key = row.get("propertyName")
        if key in properties:
            raise InvalidInput(f"{MANIFEST} line {row.line}: {_shown(key)} is given twice.")
        properties[key] = row.get("value")
    return properties


def _detect_version(manifest: Mapping[str, str], users: _Table, has_roles: bool) -> RosterVersion:
    """The version from ``manifest.csv`` when given, else from the users header.

    v1.1 puts each user's role in a ``role`` column; v1.2 moves roles to ``roles.csv``.
    """
    has_role_column = "role" in users.columns
    declared = manifest.get("oneroster.version")
    if declared is None:
        if has_role_column:
            return RosterVersion.V1_1
        if has_roles:
            return RosterVersion.V1_2
        raise InvalidInput(
            f"{USERS} has no role column and there is no {ROLES}: "
            "this is neither OneRoster 1.1 nor 1.2."
        )
    if declared == "1.1":
        version = RosterVersion.V1_1
    elif declared == "1.2" or declared.startswith("1.2."):
        version = RosterVersion.V1_2
    else:
        raise InvalidInput(
            f"{MANIFEST} declares OneRoster {_shown(declared)}; Satchel reads 1.1 and 1.2."
        )
    if version is RosterVersion.V1_1 and not has_role_column:
        raise InvalidInput(f"{MANIFEST} declares OneRoster 1.1 but {USERS} has no role column.")
    if version is RosterVersion.V1_2 and not has_roles:
        raise InvalidInput(f"{MANIFEST} declares OneRoster 1.2 but there is no {ROLES}.")
    for name in (USERS, ROLES) if version is RosterVersion.V1_2 else (USERS,):
        if manifest.get(f"file.{name.removesuffix('.csv')}") == "absent":
            raise InvalidInput(f"{MANIFEST} says {name} is absent; there is nothing to import.")
    return version


def parse_roster(files: Mapping[str, bytes]) -> Roster:
    """Check a OneRoster CSV set given as file name → contents.

    Only ``manifest.csv``, ``users.csv``, ``roles.csv`` and ``orgs.csv`` are read.
    Raises InvalidInput when the set as a whole cannot be read (no ``users.csv``, an
    unknown version, a header without a needed column); a malformed row is returned in
    ``Roster.rejected`` with its file, line and reason, never raised.
    """
    if USERS not in files:
        raise InvalidInput(f"There is no {USERS}: nothing to import.")
    manifest = _read_manifest(files[MANIFEST]) if MANIFEST in files else {}
    users = _read_table(
        USERS, files[USERS], _USER_COLUMNS, ("sourcedId", "givenName", "familyName")
    )
    version = _detect_version(manifest, users, ROLES in files)
    rejected: list[Rejected] = list(users.rejected)
    roles: dict[str, list[_RoleRow]] | None = None
    if version is RosterVersion.V1_2:
        table = _read_table(
            ROLES, files[ROLES], _ROLE_COLUMNS, ("sourcedId", "userSourcedId", "roleType", "role")
        )
        roles = _parse_roles(table, {r.get("sourcedId") for r in users.rows}, rejected)
    schools: tuple[RosterSchool, ...] = ()
    skipped = 0
    if ORGS in files:
        orgs = _read_table(ORGS, files[ORGS], _ORG_COLUMNS, ("sourcedId", "name", "type"))
        schools, skipped = _parse_orgs(orgs, rejected)
    people, skipped_people = _parse_people(users, version, roles, rejected)
    return Roster(
        version=version,
        schools=schools,
        people=people,
        skipped=skipped + skipped_people,
        rejected=tuple(sorted(rejected, key=lambda r: (r.file, r.line))),
        listed_ids=frozenset(sid for r in users.rows if (sid := r.get("sourcedId"))),
    )


def read_roster(directory: Path) -> Roster:
    """:func:`parse_roster` on the OneRoster files in ``directory``.

    Raises InvalidInput if it is not a readable directory (see parse_roster for more).
    """
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a directory.")
    files: dict[str, bytes] = {}
    for name in (MANIFEST, USERS, ROLES, ORGS):
        path = directory / name
        if path.is_file():
            try:
                files[name] = path.read_bytes()
            except OSError as e:
                raise InvalidInput(f"Cannot read {path}: {e.strerror}.") from None
    return parse_roster(files)


def _duplicates(rows: Iterable[_Row], key: Callable[[_Row], str | None]) -> dict[int, list[int]]:
    """Row line → the other lines sharing its (non-empty) key."""
    lines: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        value = key(row)
        if value:
            lines[value].append(row.line)
    return {
        line: [other for other in group if other != line]
        for group in lines.values()
        if len(group) > 1
        for line in group
    }


def _lines(numbers: Iterable[int]) -> str:
    listed = list(numbers)
    return ("line " if len(listed) == 1 else "lines ") + ", ".join(map(str, listed))


def _source_id(value: str, column: str) -> str:
    if not value:
        raise _RowError(f"{column} is required")
    if len(value) > _MAX_SOURCED_ID:
        raise _RowError(f"{column} is longer than {_MAX_SOURCED_ID} characters")
    if not value.isprintable():
        raise _RowError(f"{column} {_shown(value)} contains unprintable characters")
    return value


def _id_list(row: _Row, column: str) -> tuple[str, ...]:
    """A OneRoster list field (comma-separated sourcedIds), de-duplicated, in order."""
    items = [item.strip() for item in row.get(column).split(",")]
    return tuple(dict.fromkeys(_source_id(item, column) for item in items if item))


def _status(row: _Row) -> bool:
    """Whether the row withdraws its record (``tobedeleted``)."""
    status = row.get("status").lower()
    if status not in _STATUSES:
        raise _RowError(f"status {_shown(row.get('status'))} is not active or tobedeleted")
    return status in _WITHDRAWN


def _text(row: _Row, column: str, *, max_length: int, required: bool = False) -> str | None:
    try:
        return clean_text(row.get(column), column, max_length=max_length, required=required)
    except InvalidInput as e:
        raise _RowError(e.public_message.removeprefix("The ").rstrip(".")) from None


def _required_text(row: _Row, column: str, *, max_length: int) -> str:
    value = _text(row, column, max_length=max_length, required=True)
    assert value is not None  # clean_text returns a value when required
    return value


def _code(value: str | None, what: str) -> str | None:
    if value is not None and len(value) > _MAX_CODE:
        raise _RowError(f"{what} is longer than {_MAX_CODE} characters")
    return value


def _identifier(row: _Row, fallback: str, what: str) -> str:
    """``identifier`` (human-readable, e.g. a district student number), else the sourcedId."""
    identifier = row.get("identifier")
    if identifier and not identifier.isprintable():
        raise _RowError(f"identifier {_shown(identifier)} contains unprintable characters")
    code = _code(identifier or fallback, f"the {what} (identifier, else sourcedId)")
    assert code is not None
    return code


def _state_id(row: _Row) -> str | None:
    """The ``{state:…}`` entry of ``userIds`` (a list of ``{type:identifier}``)."""
    text = row.get("userIds")
    if not text:
        return None
    pairs = _USER_ID.findall(text)
    if _USER_ID.sub("", text).replace(",", "").strip() or not pairs:
        raise _RowError(f"userIds {_shown(text)} is not a list of {{type:identifier}}")
    states = {value.strip() for kind, value in pairs if kind.strip().lower() in _STATE_ID_TYPES}
    if len(states) > 1:
        raise _RowError("userIds holds more than one state id")
    state = states.pop() if states else None
    if state is not None and (not state or not state.isprintable()):
        raise _RowError(f"userIds has an empty or unprintable state id {_shown(state)}")
    return _code(state, "the state id in userIds")


def _grade(row: _Row) -> str | None:
    """The first of ``grades``, with CEDS codes written as Satchel shows grades (05 → 5,
    KG → K)."""
    grades = [g.strip() for g in row.get("grades").split(",") if g.strip()]
    if not grades:
        return None
    grade = grades[0]
    if len(grade) > _MAX_GRADE or not grade.isprintable():
        raise _RowError(f"grades {_shown(grade)} is not a grade level")
    if grade.isdigit() and grade.isascii():
        return str(int(grade))
    return "K" if grade.upper() == "KG" else grade


def _enabled(row: _Row) -> bool:
    value = row.get("enabledUser").lower()
    if value not in {"", "true", "false"}:
        raise _RowError(f"enabledUser {_shown(row.get('enabledUser'))} is not true or false")
    return value != "false"


@dataclass(frozen=True)
class _RoleRow:
    line: int
    role: str
    primary: bool
    withdrawn: bool
    org_id: str | None


def _role_name(value: str, column: str) -> str:
    role = value.lower()
    if not role:
        raise _RowError(f"{column} is required")
    if role != _STUDENT_ROLE and role not in _GUARDIAN_ROLES and role not in _STAFF_ROLES:
        raise _RowError(f"{column} {_shown(value)} is not a OneRoster role")
    return role


def _parse_roles(
    table: _Table, user_ids: set[str], rejected: list[Rejected]
) -> dict[str, list[_RoleRow]]:
    """v1.2 ``roles.csv`` rows grouped by the user they belong to."""
    rejected.extend(table.rejected)
    duplicates = _duplicates(table.rows, lambda r: r.get("sourcedId"))
    roles: dict[str, list[_RoleRow]] = defaultdict(list)
    for row in table.rows:
        try:
            sid = _source_id(row.get("sourcedId"), "sourcedId")
            if row.line in duplicates:
                raise _RowError(
                    f"sourcedId {_shown(sid)} is also on {_lines(duplicates[row.line])}"
                )
            user = _source_id(row.get("userSourcedId"), "userSourcedId")
            if user not in user_ids:
                raise _RowError(f"userSourcedId {_shown(user)} is not in {USERS}")
            role = _role_name(row.get("role"), "role")
            role_type = row.get("roleType").lower()
            if role_type not in _ROLE_TYPES:
                raise _RowError(
                    f"roleType {_shown(row.get('roleType'))} is not primary or secondary"
                )
            org = row.get("orgSourcedId")
            roles[user].append(
                _RoleRow(
                    row.line, role, role_type == "primary", _status(row),
                    _source_id(org, "orgSourcedId") if org else None,
                )
            )  # fmt: skip
        except _RowError as e:
            rejected.append(Rejected(row.file, row.line, str(e)))
    return roles


def _parse_orgs(table: _Table, rejected: list[Rejected]) -> tuple[tuple[RosterSchool, ...], int]:
    """The schools of ``orgs.csv`` and how many other orgs (districts, …) were skipped."""
    rejected.extend(table.rejected)
    duplicates = _duplicates(table.rows, lambda r: r.get("sourcedId"))
    codes = _duplicates(
        (r for r in table.rows if r.get("type").lower() == "school"),
        lambda r: r.get("identifier") or r.get("sourcedId"),
    )
    schools: list[RosterSchool] = []
    skipped = 0
    for row in table.rows:
        try:
            sid = _source_id(row.get("sourcedId"), "sourcedId")
            if row.line in duplicates:
                raise _RowError(
                    f"sourcedId {_shown(sid)} is also on {_lines(duplicates[row.line])}"
                )
            if not row.get("type"):
                raise _RowError("type is required")
            if row.get("type").lower() != "school":
                skipped += 1
                continue
            if row.line in codes:
                raise _RowError(f"the school code is also used on {_lines(codes[row.line])}")
            code = _identifier(row, sid, "school code")
            name = _required_text(row, "name", max_length=200)
            schools.append(RosterSchool(row.file, row.line, sid, code, name, _status(row)))
        except _RowError as e:
            rejected.append(Rejected(row.file, row.line, str(e)))
    return tuple(schools), skipped


def _kind_from_roles(
    row: _Row, version: RosterVersion, roles: Mapping[str, list[_RoleRow]] | None
) -> tuple[str, bool, tuple[str, ...]]:
    """The row's OneRoster role, whether all its roles ended, and orgs from roles.csv."""
    if version is RosterVersion.V1_1 or roles is None:
        return _role_name(row.get("role"), "role"), False, ()
    mine = roles.get(row.get("sourcedId"), [])
    if not mine:
        raise _RowError(f"no role for this user in {ROLES}")
    imported = [r for r in mine if r.role not in _STAFF_ROLES]
    if not imported:
        return mine[0].role, False, ()
    student = [r for r in imported if r.role == _STUDENT_ROLE]
    if student and len(student) != len(imported):
        raise _RowError(
            f"{ROLES} gives this user both student and guardian roles "
            f"({_lines(sorted(r.line for r in imported))})"
        )
    # The primary role decides the relationship; then the first in the file.
    ordered = sorted(imported, key=lambda r: (not r.primary, r.line))
    orgs = tuple(r.org_id for r in ordered if r.org_id)
    return ordered[0].role, all(r.withdrawn for r in imported), orgs


def _parse_people(
    users: _Table,
    version: RosterVersion,
    roles: Mapping[str, list[_RoleRow]] | None,
    rejected: list[Rejected],
) -> tuple[tuple[RosterPerson, ...], int]:
    duplicates = _duplicates(users.rows, lambda r: r.get("sourcedId"))
    people: list[RosterPerson] = []
    staff: dict[str, str] = {}  # sourcedId → role, for precise reasons about references
    skipped = 0
    for row in users.rows:
        try:
            sid = _source_id(row.get("sourcedId"), "sourcedId")
            if row.line in duplicates:
                raise _RowError(
                    f"sourcedId {_shown(sid)} is also on {_lines(duplicates[row.line])}"
                )
            role, roles_ended, role_orgs = _kind_from_roles(row, version, roles)
            if role in _STAFF_ROLES:
                staff[sid] = role
                skipped += 1
                continue
            people.append(_person(row, sid, role, roles_ended, role_orgs))
        except _RowError as e:
            rejected.append(Rejected(row.file, row.line, str(e)))
    people = _drop_shared_values(people, rejected)
    return _check_agents(people, staff, rejected), skipped


def _person(
    row: _Row, sid: str, role: str, roles_ended: bool, role_orgs: tuple[str, ...]
) -> RosterPerson:
    withdrawn = _status(row) or roles_ended
    enabled = _enabled(row)
    given = _required_text(row, "givenName", max_length=_MAX_NAME)
    family = _required_text(row, "familyName", max_length=_MAX_NAME)
    middle = _text(row, "middleName", max_length=_MAX_NAME)
    orgs = _id_list(row, "primaryOrgSourcedId") + role_orgs + _id_list(row, "orgSourcedIds")
    agents = _id_list(row, "agentSourcedIds")
    if sid in agents:
        raise _RowError("agentSourcedIds lists the user themself")
    district_id = state_id = grade = email = None
    if role == _STUDENT_ROLE:
        kind, relationship = PersonKind.STUDENT, None
        district_id = _identifier(row, sid, "district id")
        state_id, grade = _state_id(row), _grade(row)
    else:
        kind, relationship = PersonKind.GUARDIAN, _GUARDIAN_ROLES[role]
        email = _guardian_email(row, role)
    return RosterPerson(
        file=row.file, line=row.line, source_id=sid, kind=kind, relationship=relationship,
        withdrawn=withdrawn, enabled=enabled, given_name=given, middle_name=middle,
        family_name=family, district_id=district_id, state_id=state_id, grade=grade,
        email=email, org_ids=tuple(dict.fromkeys(orgs)), agent_ids=agents,
    )  # fmt: skip


def _guardian_email(row: _Row, role: str) -> str:
    address = row.get("email")
    if not address:
        raise _RowError(f"email is required for a {role}: it is how they sign in")
    try:
        return normalize_email(address)
    except InvalidInput:
        raise _RowError(f"email {_shown(address)} is not a valid email address") from None


def _drop_shared_values(people: list[RosterPerson], rejected: list[Rejected]) -> list[RosterPerson]:
    """Reject every row whose email, district id or state id another row also uses.

    Which of two rows is right cannot be known, so neither is imported (the result
    does not depend on row order).
    """
    keys: list[tuple[str, Callable[[RosterPerson], str | None]]] = [
        ("email", lambda p: p.email),
        ("district id", lambda p: p.district_id),
        ("state id", lambda p: p.state_id),
    ]
    problems: dict[int, str] = {}
    for what, key in keys:
        lines: dict[str, list[int]] = defaultdict(list)
        for person in people:
            if (value := key(person)) is not None:
                lines[value].append(person.line)
        for group in lines.values():
            for line in group if len(group) > 1 else ():
                others = [n for n in group if n != line]
                problems.setdefault(line, f"the {what} is also used on {_lines(others)}")
    for person in people:
        if person.line in problems:
            rejected.append(Rejected(person.file, person.line, problems[person.line]))
    return [p for p in people if p.line not in problems]


def _check_agents(
    people: list[RosterPerson], staff: Mapping[str, str], rejected: list[Rejected]
) -> tuple[RosterPerson, ...]:
    """Reject rows whose agentSourcedIds name a row of the wrong kind in the same file.

    References to rows outside the file are checked against the database on import.
    """
    kinds = {p.source_id: p.kind for p in people}
    kept: list[RosterPerson] = []
    for person in people:
        wanted = PersonKind.GUARDIAN if person.kind is PersonKind.STUDENT else PersonKind.STUDENT
        problem = None
        for agent in person.agent_ids:
            if agent in staff:
                problem = f"{_shown(agent)} is a {staff[agent]}"
            elif agent in kinds and kinds[agent] is not wanted:
                problem = f"{_shown(agent)} is a {kinds[agent].value}"
            if problem:
                expected = (
                    "a parent, guardian or relative"
                    if wanted is PersonKind.GUARDIAN
                    else "a student"
                )
                reason = f"agentSourcedIds: {problem}, not {expected}"
                rejected.append(Rejected(person.file, person.line, reason))
                break
        else:
            kept.append(person)
    return tuple(kept)


# Import ----------------------------------------------------------------------------------


_Model = TypeVar("_Model", Student, User)


class _Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


# (stage, done, total): stage "rows" for orgs.csv and users.csv, then "links".
ImportProgress = Callable[[str, int, int], None]

# Rows committed together by default. A transaction per row spent more time committing
# than importing; a batch's audit events are appended just before it commits (see
# _DeferredEvents), so the log's lock is not held while its rows are worked on.
BATCH_ROWS = 100


class _DeferredEvents:
    """The audit events of the open batch, appended by :meth:`_Run._commit_batch`.

    Events of the row being imported wait in ``row`` and join ``batch`` only once the
    row's savepoint is released, so a row that is rolled back takes its events with it.
    """

    def __init__(self) -> None:
        self.row: list[Event] = []
        self.batch: list[Event] = []

    def append(self, session: Session, event: Event) -> None:
        self.row.append(event)


class RosterImport:
    """Brings students, guardian accounts, schools and guardian links in from OneRoster.

    SECURITY: an import only ever creates and edits guardian accounts (never staff),
    never sets a password, never re-activates an account, and never re-opens, un-restricts
    or otherwise loosens an existing guardianship: local decisions always win.
    """

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        clock: Callable[[], datetime],
        *,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self._engine = engine
        self._audit = audit
        self._clock = clock
        self._batch_rows = batch_rows

    def import_directory(
        self,
        actor: Actor,
        directory: Path,
        *,
        dry_run: bool = False,
        progress: ImportProgress | None = None,
    ) -> ImportReport:
        """Read and import the OneRoster files in ``directory`` (see :meth:`apply`).

        Raises Forbidden (not a registrar), InvalidInput (the files as a whole cannot be
        read), AuditUnavailable (the import stops; rows already done stay done).
        """
        self._require(actor)
        # A non-UTF-8 directory name must not make the summary event unrecordable.
        source = directory.name.encode("utf-8", "replace").decode("utf-8")
        roster = read_roster(directory)
        return self.apply(actor, roster, dry_run=dry_run, source=source, progress=progress)

    def apply(
        self,
        actor: Actor,
        roster: Roster,
        *,
        dry_run: bool = False,
        source: str = "roster",
        progress: ImportProgress | None = None,
    ) -> ImportReport:
        """Import ``roster`` row by row, each row atomic with its audit events, then the
        guardian links, then one ``roster.import`` summary event.

        Rows (and links) are committed in batches of ``batch_rows``, each row in a
        savepoint of its own, so a rejected row takes back only its own changes and
        events. ``progress`` is called after every row with ``"rows"`` and after every
        link with ``"links"``, with the number done and the total.

        Idempotent: a second run of the same roster creates and updates nothing. With
        ``dry_run`` nothing is written (not even audit events) and the report says what
        would have happened. Raises Forbidden and AuditUnavailable as import_directory.
        """
        self._require(actor)
        run = _Run(
            self._engine, self._audit, actor, self._clock(), dry_run, roster,
            progress, self._batch_rows,
        )  # fmt: skip
        report = run.execute()
        if not dry_run:
            detail = f"OneRoster {roster.version.value} from {source}: {report.summary()}"
            self._audit.record(event_for(actor, Action.ROSTER_IMPORT, detail=detail))
        return report

    def _require(self, actor: Actor) -> None:
        require(
            self._audit,
            actor,
            Permission.MANAGE_FOLDER,
            self._clock(),
            "Only registrars import rosters.",
        )


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Run:
    """One import in progress: counts, rejections, and which people are in SQL."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        actor: Actor,
        now: datetime,
        dry_run: bool,
        roster: Roster,
        progress: ImportProgress | None,
        batch_limit: int,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.actor = actor
        self.now = now
        self.dry_run = dry_run
        self.roster = roster
        self.counts = dict.fromkeys(_Outcome, 0)
        self.rejected: list[Rejected] = []
        # sourcedId → row of every person imported (or already current), and their ids in
        # SQL; people a dry run would create have no id and are in ``planned``.
        self.stored: dict[str, uuid.UUID] = {}
        self.planned: set[str] = set()
        self.school_ids: set[str] = set()  # sourcedIds of the schools in SQL (or planned)
        self.links_created = 0
        self.links_ended = 0
        self.progress = progress
        self.batch_limit = batch_limit  # rows per batch
        # The open batch (not in a dry run): its session, rows so far, their events.
        self.batch: Session | None = None
        self.batch_rows = 0
        self.events = _DeferredEvents()

    def execute(self) -> ImportReport:
        """Raises AuditUnavailable (the open batch is rolled back) and what the database
        raises beyond a row's conflicts."""
        try:
            return self._execute()
        finally:
            if self.batch is not None:
                self.batch.close()  # rolls back a batch left open by an error

    def _execute(self) -> ImportReport:
        rows_total = len(self.roster.schools) + len(self.roster.people)
        rows_done = 0
        for school in self.roster.schools:
            self._row(school.file, school.line, partial(self._school, row=school))
            rows_done += 1
            self._advance("rows", rows_done, rows_total)
        self._commit_batch()  # the next query reads the schools in a session of its own
        with Session(self.engine) as session:
            known = session.scalars(select(School.source_id).where(School.source_id.is_not(None)))
            self.school_ids |= {sid for sid in known if sid is not None}
            external = self._external_agents(session)
        for person in self.roster.people:
            problem = self._reference_problem(person, external)
            if problem:
                self.rejected.append(Rejected(person.file, person.line, problem))
            elif not self._row(person.file, person.line, partial(self._person, person=person)):
                self.stored.pop(person.source_id, None)
            rows_done += 1
            self._advance("rows", rows_done, rows_total)
        links = self._links(external)
        for done, (guardian, student, relationship) in enumerate(links, start=1):
            self._link(guardian, student, relationship)
            self._advance("links", done, len(links))
        self._commit_batch()
        rejected = sorted([*self.roster.rejected, *self.rejected], key=lambda r: (r.file, r.line))
        return ImportReport(
            version=self.roster.version,
            dry_run=self.dry_run,
            created=self.counts[_Outcome.CREATED],
            updated=self.counts[_Outcome.UPDATED],
            unchanged=self.counts[_Outcome.UNCHANGED],
            skipped=self.roster.skipped,
            links_created=self.links_created,
            links_ended=self.links_ended,
            rejected=tuple(rejected),
        )

    # Transactions ------------------------------------------------------------------------

    def _advance(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One row's unit of work: a savepoint in the open batch, which is committed
        after ``batch_limit`` rows; in a dry run, a read-only session rolled back."""
        if self.dry_run:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
                session.rollback()
            return
        if self.batch is None:
            self.batch = Session(self.engine, expire_on_commit=False)
            self.batch.begin()
        self.events.row.clear()
        with self.batch.begin_nested():
            yield self.batch
        self.events.batch.extend(self.events.row)
        self.batch_rows += 1
        if self.batch_rows >= self.batch_limit:
            self._commit_batch()

    def _commit_batch(self) -> None:
        """Append the open batch's events and commit them with its rows.

        Raises AuditUnavailable (nothing of the batch is stored) and what the commit raises.
        """
        batch, events = self.batch, self.events.batch
        self.batch, self.events.batch, self.batch_rows = None, [], 0
        if batch is None:
            return
        with batch:
            for event in events:
                self.audit.append(batch, event)
            batch.commit()

    def _row(self, file: str, line: int, work: Callable[[Session], _Outcome]) -> bool:
        """Run one row's work in its own savepoint; False (and a rejection) if refused."""
        try:
            with self._transaction() as session:
                outcome = work(session)
        except _RowError as e:
            self.rejected.append(Rejected(file, line, str(e)))
            return False
        except IntegrityError:
            self.rejected.append(
                Rejected(file, line, "conflicts with a record changed at the same time; "
                                     "import again")
            )  # fmt: skip
            return False
        self.counts[outcome] += 1
        return True

    def _record(
        self, session: Session, action: Action, *, student_id: uuid.UUID | None = None, detail: str
    ) -> None:
        if not self.dry_run:
            self.events.append(
                session, event_for(self.actor, action, student_id=student_id, detail=detail)
            )

    # Schools -----------------------------------------------------------------------------

    def _school(self, session: Session, row: RosterSchool) -> _Outcome:
        school = session.scalar(select(School).where(School.source_id == row.source_id))
        if school is None:
            school = session.scalar(select(School).where(School.code == row.code))
            if school is not None and school.source_id is not None:
                raise _RowError(
                    f"the school code {_shown(row.code)} belongs to the org "
                    f"{_shown(school.source_id)}"
                )
        if row.withdrawn:
            # Schools have no active flag; a withdrawn org changes nothing here.
            return _Outcome.UNCHANGED
        if school is None:
            if not self.dry_run:
                session.add(
                    School(
                        code=row.code, name=row.name, source_id=row.source_id, created_at=self.now
                    )
                )
            self.school_ids.add(row.source_id)
            return _Outcome.CREATED
        wanted = {"source_id": row.source_id, "code": row.code, "name": row.name}
        changes = {k: v for k, v in wanted.items() if getattr(school, k) != v}
        if "code" in changes and session.scalar(
            select(School.id).where(School.code == row.code, School.id != school.id)
        ):
            raise _RowError(f"the school code {_shown(row.code)} belongs to another school")
        if not changes:
            return _Outcome.UNCHANGED
        if not self.dry_run:
            for key, value in changes.items():
                setattr(school, key, value)
        return _Outcome.UPDATED

    # References --------------------------------------------------------------------------

    def _external_agents(self, session: Session) -> dict[str, PersonKind]:
        """The kind of every agentSourcedId that is not in users.csv but is in SQL."""
        wanted = sorted(
            {a for p in self.roster.people for a in p.agent_ids} - self.roster.listed_ids
        )
        found: dict[str, PersonKind] = {}
        for chunk in _chunks(wanted):
            for sid in session.scalars(
                select(Student.source_id).where(Student.source_id.in_(chunk))
            ):
                assert sid is not None
                found[sid] = PersonKind.STUDENT
            for sid in session.scalars(
                select(User.source_id).where(User.source_id.in_(chunk), User.role == Role.GUARDIAN)
            ):
                assert sid is not None
                found[sid] = PersonKind.GUARDIAN
        return found

    def _reference_problem(
        self, person: RosterPerson, external: Mapping[str, PersonKind]
    ) -> str | None:
        wanted = PersonKind.GUARDIAN if person.kind is PersonKind.STUDENT else PersonKind.STUDENT
        for agent in person.agent_ids:
            if agent in self.roster.listed_ids:
                continue  # checked by the parser; a rejected row just gives no link
            if agent not in external:
                return f"agentSourcedIds: {_shown(agent)} is neither in {USERS} nor in Satchel"
            if external[agent] is not wanted:
                return f"agentSourcedIds: {_shown(agent)} is a {external[agent].value} in Satchel"
        return None

    # People ------------------------------------------------------------------------------

    def _person(self, session: Session, person: RosterPerson) -> _Outcome:
        if person.kind is PersonKind.STUDENT:
            return self._student(session, person)
        return self._guardian(session, person)

    def _student(self, session: Session, row: RosterPerson) -> _Outcome:
        assert row.district_id is not None
        student = session.scalar(select(Student).where(Student.source_id == row.source_id))
        if student is None:
            # A student entered by hand before the first import is the same child: adopt.
            student = session.scalar(select(Student).where(Student.district_id == row.district_id))
            if student is not None and student.source_id is not None:
                raise _RowError(
                    f"the district id {_shown(row.district_id)} belongs to the "
                    f"student with sourcedId {_shown(student.source_id)}"
                )
        if student is None and row.withdrawn:
            return _Outcome.UNCHANGED  # nothing to deactivate
        school = next((o for o in row.org_ids if o in self.school_ids), None)
        if student is None:
            self._check_free(session, row, None)
            if self.dry_run:
                self.planned.add(row.source_id)
                self.stored[row.source_id] = uuid.uuid4()  # a stand-in, never written
                return _Outcome.CREATED
            student = Student(
                district_id=row.district_id, state_id=row.state_id, source_id=row.source_id,
                given_name=row.given_name, middle_name=row.middle_name,
                family_name=row.family_name, grade=row.grade, status=StudentStatus.ACTIVE,
                school_id=self._school_id(session, school), created_at=self.now,
                updated_at=self.now,
            )  # fmt: skip
            session.add(student)
            session.flush()
            self.stored[row.source_id] = student.id
            self._record(
                session,
                Action.STUDENT_CREATE,
                student_id=student.id,
                detail=f"from roster (sourcedId {row.source_id})",
            )
            return _Outcome.CREATED
        self.stored[row.source_id] = student.id
        wanted: dict[str, object] = {"source_id": row.source_id}
        if row.withdrawn:
            if student.status is StudentStatus.ACTIVE:
                wanted["status"] = StudentStatus.INACTIVE
        else:
            wanted |= {
                "district_id": row.district_id, "given_name": row.given_name,
                "middle_name": row.middle_name, "family_name": row.family_name,
            }  # fmt: skip
            # The roster fills in grade, state id and school but never erases them.
            if row.grade is not None:
                wanted["grade"] = row.grade
            if row.state_id is not None:
                wanted["state_id"] = row.state_id
        changes = {k: v for k, v in wanted.items() if getattr(student, k) != v}
        current_school = (
            session.scalar(select(School.source_id).where(School.id == student.school_id))
            if student.school_id else None
        )  # fmt: skip
        if school is not None and not row.withdrawn and school != current_school:
            changes["school"] = school
        if not changes:
            return _Outcome.UNCHANGED
        self._check_free(session, row, student.id)
        if not self.dry_run:
            for key, value in changes.items():
                if key == "school":
                    student.school_id = self._school_id(session, school)
                else:
                    setattr(student, key, value)
            student.updated_at = self.now
            self._record(
                session,
                Action.STUDENT_UPDATE,
                student_id=student.id,
                detail=f"from roster: {', '.join(sorted(changes))}",
            )
        return _Outcome.UPDATED

    @staticmethod
    def _school_id(session: Session, source_id: str | None) -> uuid.UUID | None:
        if source_id is None:
            return None
        return session.scalar(select(School.id).where(School.source_id == source_id))

    @staticmethod
    def _check_free(session: Session, row: RosterPerson, own: uuid.UUID | None) -> None:
        """The row's district and state ids must not belong to another student."""
        for column, value, what in (
            (Student.district_id, row.district_id, "district id"),
            (Student.state_id, row.state_id, "state id"),
        ):
            if value is None:
                continue
            other = session.scalar(
                select(Student).where(column == value, Student.id != own)
                if own
                else select(Student).where(column == value)
            )
            if other is not None:
                raise _RowError(
                    f"the {what} {_shown(value)} belongs to another student ({other.district_id})"
                )

    def _guardian(self, session: Session, row: RosterPerson) -> _Outcome:
        assert row.email is not None
        user = session.scalar(select(User).where(User.source_id == row.source_id))
        if user is None:
            user = session.scalar(select(User).where(User.email == row.email))
            if user is not None and user.role is Role.GUARDIAN and user.source_id is not None:
                raise _RowError(
                    f"the email {row.email} belongs to the guardian with sourcedId "
                    f"{_shown(user.source_id)}"
                )
        if user is not None and user.role is not Role.GUARDIAN:
            # SECURITY: a roster file must never take over or change a staff account.
            raise _RowError(
                f"this matches the {user.role.value} account {user.email}; "
                "an import never changes staff accounts"
            )
        if user is None:
            if row.withdrawn:
                return _Outcome.UNCHANGED
            if self.dry_run:
                self.planned.add(row.source_id)
                self.stored[row.source_id] = uuid.uuid4()  # a stand-in, never written
                return _Outcome.CREATED
            # No password: the guardian sets one through a password-set link later.
            user = User(
                email=row.email,
                display_name=row.display_name,
                password_hash=None,
                role=Role.GUARDIAN,
                active=row.enabled,
                source_id=row.source_id,
                created_at=self.now,
            )
            session.add(user)
            session.flush()
            self.stored[row.source_id] = user.id
            self._record(
                session,
                Action.USER_CREATE,
                detail=f"{row.email} (guardian) from roster (sourcedId {row.source_id})",
            )
            return _Outcome.CREATED
        self.stored[row.source_id] = user.id
        wanted: dict[str, object] = {"source_id": row.source_id}
        if not row.withdrawn:
            wanted |= {"display_name": row.display_name, "email": row.email}
        # SECURITY: the roster may switch an account off, never back on.
        if (row.withdrawn or not row.enabled) and user.active:
            wanted["active"] = False
        changes = {k: v for k, v in wanted.items() if getattr(user, k) != v}
        open_links = (
            session.scalars(
                select(Guardianship).where(
                    Guardianship.guardian_id == user.id, Guardianship.ended_at.is_(None)
                )
            ).all()
            if row.withdrawn
            else []
        )
        if not changes and not open_links:
            return _Outcome.UNCHANGED
        if "email" in changes and session.scalar(
            select(User.id).where(User.email == row.email, User.id != user.id)
        ):
            raise _RowError(f"the email {row.email} belongs to another account")
        if not self.dry_run:
            old_email = user.email
            for key, value in changes.items():
                setattr(user, key, value)
            if changes.keys() - {"active"}:
                fields = ", ".join(sorted(changes.keys() - {"active"}))
                self._record(
                    session,
                    Action.USER_UPDATE,
                    detail=f"{old_email} (guardian) from roster: {fields}",
                )
            if "active" in changes:
                self._record(
                    session, Action.USER_DISABLE, detail=f"{user.email} (guardian) by the roster"
                )
            for link in open_links:
                link.ended_at = self.now
                self._record(
                    session,
                    Action.GUARDIAN_UNLINK,
                    student_id=link.student_id,
                    detail=f"{user.email}: withdrawn in the roster",
                )
                # An ended link takes its shares with it, as a registrar's unlinking does.
                revoke_guardian_grants(
                    session,
                    self.events,
                    self.actor,
                    user.id,
                    link.student_id,
                    GUARDIANSHIP_ENDED,
                    self.now,
                )
        self.links_ended += len(open_links)
        return _Outcome.UPDATED

    # Links -------------------------------------------------------------------------------

    def _links(self, external: Mapping[str, PersonKind]) -> list[tuple[str, str, Relationship]]:
        """(guardian, student, relationship) pairs from agentSourcedIds on either side."""
        rows = {p.source_id: p for p in self.roster.people if p.source_id in self.stored}
        pairs: dict[tuple[str, str], Relationship] = {}
        for person in rows.values():
            if person.withdrawn:
                continue
            for agent in person.agent_ids:
                other = rows.get(agent)
                if other is None and agent not in external:
                    continue  # a row rejected or skipped in this import
                if other is not None and other.withdrawn:
                    continue
                if person.kind is PersonKind.GUARDIAN:
                    assert person.relationship is not None
                    pairs[(person.source_id, agent)] = person.relationship
                else:
                    # A guardian known only from an earlier import: the file does not
                    # say how they are related.
                    relation = other.relationship if other else None
                    pairs.setdefault((agent, person.source_id), relation or Relationship.OTHER)
        return [(g, s, r) for (g, s), r in pairs.items()]

    def _find(self, session: Session, model: type[_Model], source_id: str) -> _Model | None:
        """The record of a person of this run (by id: a dry run has not stored the
        sourcedId of a record it adopts), else of an earlier import."""
        if source_id in self.stored:
            return session.get(model, self.stored[source_id])
        return session.scalar(select(model).where(model.source_id == source_id))

    def _link(self, guardian_sid: str, student_sid: str, relationship: Relationship) -> None:
        try:
            created = self._add_link(guardian_sid, student_sid, relationship)
        except IntegrityError:
            created = False  # linked by someone else at the same moment: nothing to add
        self.links_created += created

    def _add_link(self, guardian_sid: str, student_sid: str, relationship: Relationship) -> bool:
        if {guardian_sid, student_sid} & self.planned:
            return True  # a dry run: one side would have been created just now
        with self._transaction() as session:
            guardian = self._find(session, User, guardian_sid)
            student = self._find(session, Student, student_sid)
            # SECURITY: only ever link a guardian account, whatever else matched.
            if guardian is None or student is None or guardian.role is not Role.GUARDIAN:
                return False
            existing = session.scalar(
                select(Guardianship.id).where(
                    Guardianship.guardian_id == guardian.id, Guardianship.student_id == student.id
                )
            )
            if existing is not None:
                # SECURITY: an existing link is left exactly as it is, so a link a
                # registrar restricted or ended stays restricted or ended.
                return False
            if not self.dry_run:
                session.add(
                    Guardianship(
                        guardian_id=guardian.id,
                        student_id=student.id,
                        relationship=relationship,
                        restricted=False,
                        created_at=self.now,
                    )
                )
                session.flush()
                self._record(
                    session,
                    Action.GUARDIAN_LINK,
                    student_id=student.id,
                    detail=f"{guardian.email} ({relationship.value}) from roster",
                )
            return True
