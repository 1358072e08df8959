"""Audit events: the vocabulary, the event record, and its canonical bytes.

Every event is stored as one **entry**: a JSON object with sorted keys, no whitespace,
UTF-8, non-ASCII characters written as themselves, every key always present (``null``
when empty), and the keys::

    action actor_email actor_id actor_role client_address detail document_id grant_id
    outcome prev purpose request_id seq student_id time user_agent v version_id

``seq`` is the event's sequence number (1, 2, …), ``time`` the moment it was recorded
(RFC 3339 UTC with six fraction digits, ``2025-01-31T12:00:00.000000Z``), ``prev`` the hex
leaf hash of the previous event (64 zeros for event 1), which makes the entries a hash
chain, and ``v`` the entry format version. The entry bytes are what is hashed (RFC 9162
leaf hash ``SHA-256(0x00 || entry)``); ``docs/audit-log.md`` is the full specification.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring

from audit.merkle import HASH_SIZE

__all__ = [
    "ENTRY_KEYS",
    "ENTRY_VERSION",
    "GENESIS_HASH",
    "PAYLOAD_FIELDS",
    "USER_AGENT_LIMIT",
    "Action",
    "DecodedEntry",
    "Event",
    "Outcome",
    "RecordedEvent",
    "decode_entry",
    "encode_entry",
    "entry_from_values",
    "event_values",
    "format_time",
    "parse_time",
]


class Action(StrEnum):
    """What happened. Values are stable: they are part of the signed entries."""

    DOCUMENT_VIEW = "document.view"
    DOCUMENT_DOWNLOAD = "document.download"
    DOCUMENT_PREVIEW = "document.preview"
    DOCUMENT_METADATA = "document.metadata"
    DOCUMENT_UPLOAD = "document.upload"
    DOCUMENT_VERSION = "document.version"
    FOLDER_VIEW = "folder.view"
    FOLDER_EXPORT = "folder.export"
    GRANT_CREATE = "grant.create"
    GRANT_REVOKE = "grant.revoke"
    LOGIN = "auth.login"
    LOGIN_FAILED = "auth.login_failed"
    LOGIN_THROTTLED = "auth.login_throttled"
    ACCESS_DENIED = "access.denied"
    STUDENT_CREATE = "student.create"
    STUDENT_UPDATE = "student.update"
    GUARDIAN_LINK = "guardian.link"
    GUARDIAN_UNLINK = "guardian.unlink"
    GUARDIAN_RESTRICT = "guardian.restrict"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"
    USER_DISABLE = "user.disable"
    USER_ENABLE = "user.enable"
    ROSTER_IMPORT = "roster.import"
    AUDIT_QUERY = "audit.query"
    AUDIT_EXPORT = "audit.export"
    AUDIT_VERIFY = "audit.verify"
    KEY_ROTATE = "key.rotate"
    KEY_RETIRE = "key.retire"
    KEY_DESTROY = "key.destroy"
    KEY_SHRED = "key.shred"
    FSCK = "store.fsck"
    FSCK_REPAIR = "store.repair"


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    ERROR = "error"


ENTRY_VERSION = 1
"""The ``v`` of every entry this code writes."""

GENESIS_HASH = bytes(HASH_SIZE)
"""The ``prev`` of event 1: there is no earlier event."""

USER_AGENT_LIMIT = 512
"""User agents are client-chosen; longer ones are cut to this many characters."""

# Longest value accepted per text field, in characters (what the columns hold).
_LIMITS = {
    "actor_id": 64,
    "actor_role": 32,
    "actor_email": 254,
    "student_id": 64,
    "document_id": 64,
    "version_id": 64,
    "grant_id": 64,
    "purpose": 2000,
    "detail": 4000,
    "request_id": 64,
    "client_address": 64,
    "user_agent": USER_AGENT_LIMIT,
}


@dataclass(frozen=True)
class Event:
    """One thing to record. ``purpose`` is the legitimate interest staff give, if any.

    Raises ``ValueError`` for an unknown action or outcome, a text field longer than its
    limit or holding NUL or a lone surrogate, and ``TypeError`` for a non-text value.
    ``user_agent`` (chosen by the client) is cut to :data:`USER_AGENT_LIMIT` characters
    and its NUL characters replaced instead, so a hostile header cannot block an action.
    """

    action: Action
    outcome: Outcome
    actor_id: str | None = None
    actor_role: str | None = None
    actor_email: str | None = None
    student_id: str | None = None
    document_id: str | None = None
    version_id: str | None = None
    grant_id: str | None = None
    purpose: str | None = None
    detail: str | None = None
    request_id: str | None = None
    client_address: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.user_agent is not None and isinstance(self.user_agent, str):
            cleaned = self.user_agent[:USER_AGENT_LIMIT].replace(
                "\x00", "\N{REPLACEMENT CHARACTER}"
            )
            object.__setattr__(self, "user_agent", cleaned)
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"event field {name} must be text, got {type(value).__name__}")
            if len(value) > limit:
                raise ValueError(f"event field {name} is longer than {limit} characters")
            if "\x00" in value:
                raise ValueError(f"event field {name} contains NUL")
            # Checked here, before anything is written, so encoding can never fail
            # halfway through an append.
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"event field {name} is not valid Unicode text") from e


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: its place in the log, its exact entry bytes and hashes.

    ``leaf_hash`` is ``SHA-256(0x00 || entry)``; ``previous_hash`` is the leaf hash of
    the event before (the entry's ``prev``), :data:`GENESIS_HASH` for event 1.
    """

    sequence: int
    recorded_at: datetime
    event: Event
    previous_hash: bytes
    entry: bytes
    leaf_hash: bytes


def format_time(moment: datetime) -> str:
    """Return ``moment`` as the entry's ``time``: RFC 3339 UTC, six fraction digits.

    Raises ``ValueError`` for a naive datetime.
    """
    if moment.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; raises ``ValueError`` for any other form."""
    if len(text) != 27 or not text.endswith("Z") or text[10] != "T":
        raise ValueError(f"not an audit time: {text!r}")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


PAYLOAD_FIELDS = (
    "action",
    "actor_email",
    "actor_id",
    "actor_role",
    "client_address",
    "detail",
    "document_id",
    "grant_id",
    "outcome",
    "purpose",
    "request_id",
    "student_id",
    "user_agent",
    "version_id",
)
"""The event's fields in the order they appear in an entry."""

ENTRY_KEYS = frozenset({*PAYLOAD_FIELDS, "prev", "seq", "time", "v"})


def entry_from_values(
    sequence: int, time_text: str, previous_hex: str, values: Sequence[str | None]
) -> bytes:
    """The entry bytes for already-formatted parts; ``values`` follow ``PAYLOAD_FIELDS``.

    Writes exactly what ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` writes for the entry (a test holds it to that), several times
    faster, which verification needs. Raises ``TypeError`` or ``ValueError`` for a
    sequence number that is not an integer.
    """
    # Written out field by field, keys in sorted order: verification runs this for
    # every event, and a helper call per field would cost a third of its time. One
    # f-string is a fifth faster than the same with %-formatting.
    q = encode_basestring
    # One letter per field of PAYLOAD_FIELDS, in order.
    (a, b, c, d, e, f, g, h, i, j, k, m, n, o) = values
    return (
        f'{{"action":{"null" if a is None else q(a)},'
        f'"actor_email":{"null" if b is None else q(b)},'
        f'"actor_id":{"null" if c is None else q(c)},'
        f'"actor_role":{"null" if d is None else q(d)},'
        f'"client_address":{"null" if e is None else q(e)},'
        f'"detail":{"null" if f is None else q(f)},'
        f'"document_id":{"null" if g is None else q(g)},'
        f'"grant_id":{"null" if h is None else q(h)},'
        f'"outcome":{"null" if i is None else q(i)},'
        f'"prev":"{previous_hex}",'
        f'"purpose":{"null" if j is None else q(j)},'
        f'"request_id":{"null" if k is None else q(k)},'
        f'"seq":{sequence:d},'
        f'"student_id":{"null" if m is None else q(m)},'
        f'"time":"{time_text}",'
        f'"user_agent":{"null" if n is None else q(n)},'
        f'"v":{ENTRY_VERSION},'
        f'"version_id":{"null" if o is None else q(o)}}}'
    ).encode()


def event_values(event: Event) -> tuple[str | None, ...]:
    """The event's fields in ``PAYLOAD_FIELDS`` order, as plain strings."""
    return tuple(
        None if (value := getattr(event, name)) is None else str(value) for name in PAYLOAD_FIELDS
    )


def encode_entry(sequence: int, recorded_at: datetime, previous_hash: bytes, event: Event) -> bytes:
    """Return the canonical entry bytes of ``event`` recorded as number ``sequence``.

    Raises ``ValueError`` for a sequence below 1, a naive time, or a previous hash that
    is not 32 bytes.
    """
    if sequence < 1:
        raise ValueError(f"sequence numbers start at 1, got {sequence}")
    if len(previous_hash) != HASH_SIZE:
        raise ValueError(f"previous hash must be {HASH_SIZE} bytes")
    return entry_from_values(
        sequence, format_time(recorded_at), previous_hash.hex(), event_values(event)
    )


@dataclass(frozen=True)
class DecodedEntry:
    """What an entry says about itself."""

    sequence: int
    recorded_at: datetime
    previous_hash: bytes
    event: Event
    canonical: bool
    """Whether the bytes are exactly what :func:`encode_entry` writes for this content."""


def decode_entry(entry: bytes) -> DecodedEntry:
    """Parse entry bytes. Raises ``ValueError`` if they are not an audit entry."""
    if not isinstance(entry, bytes):  # SQLite keeps whatever type is written to a column
        raise ValueError(f"entry is {type(entry).__name__}, not bytes")
    try:
        obj = json.loads(entry.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"entry is not UTF-8 JSON: {e}") from e
    if not isinstance(obj, dict) or set(obj) != ENTRY_KEYS:
        raise ValueError("entry does not have exactly the audit entry keys")
    if type(obj["v"]) is not int or obj["v"] != ENTRY_VERSION:
        raise ValueError(f"unknown entry version {obj['v']!r}")
    sequence, time_text, prev = obj["seq"], obj["time"], obj["prev"]
    if type(sequence) is not int or sequence < 1:
        raise ValueError("entry seq is not a positive integer")
    if not isinstance(time_text, str) or not isinstance(prev, str):
        raise ValueError("entry time and prev must be text")
    previous_hash = bytes.fromhex(prev)
    if len(previous_hash) != HASH_SIZE or prev != previous_hash.hex():
        raise ValueError("entry prev is not a lower-case hex SHA-256 hash")
    values = {name: obj[name] for name in PAYLOAD_FIELDS}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"entry field {name} is not text or null")
    recorded_at = parse_time(time_text)
    try:
        event = Event(**values)
    except TypeError as e:  # a missing action or outcome
        raise ValueError(f"entry is not a valid event: {e}") from e
    canonical = entry == entry_from_values(sequence, time_text, prev, event_values(event))
    return DecodedEntry(sequence, recorded_at, previous_hash, event, canonical)
