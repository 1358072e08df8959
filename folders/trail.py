"""Compliance use cases on the audit trail: search, verify, export. Each is audited.

Only actors the policy lets read the audit trail get here; compliance reads the trail,
never the records themselves.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from audit.checkpoint import Checkpoint
from audit.events import Action, Outcome, RecordedEvent
from audit.export import CSV_COLUMNS, ExportFormat, export_events
from audit.log import AuditLog, EventFilter, Page
from audit.verify import VerifyReport
from folders.actor import Actor
from folders.auditing import event_for, require
from folders.policy import Permission

_EXPORT_BATCH = 1000
_CSV_HEADER = (",".join(CSV_COLUMNS) + "\r\n").encode("utf-8")


@dataclass(frozen=True)
class TrailQuery:
    """Filters on the trail; every one is optional. ``until`` is exclusive;
    ``up_to_seq`` keeps events numbered at most it (a search's snapshot)."""

    actor_email: str | None = None
    student_id: uuid.UUID | None = None
    document_id: uuid.UUID | None = None
    action: Action | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    up_to_seq: int | None = None

    def describe(self) -> str:
        """The filters as text, for the audit event that records the search."""
        parts = [
            f"{name}={value.isoformat() if isinstance(value, datetime) else value}"
            for name, value in vars(self).items()
            if value is not None
        ]
        return ", ".join(parts) or "no filters"

    def event_filter(self) -> EventFilter:
        return EventFilter(
            actor_email=self.actor_email,
            student_id=str(self.student_id) if self.student_id else None,
            document_id=str(self.document_id) if self.document_id else None,
            action=self.action,
            outcome=self.outcome,
            since=self.since,
            until=self.until,
            up_to_seq=self.up_to_seq,
        )


@dataclass(frozen=True)
class Verification:
    report: VerifyReport
    latest_checkpoint: Checkpoint | None


class AuditTrail:
    """Search, verify and export the audit log on behalf of an actor."""

    def __init__(self, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._audit = audit
        self._clock = clock

    def search(
        self, actor: Actor, query: TrailQuery, *, page: int = 1, per_page: int = 50
    ) -> Page[RecordedEvent]:
        """Matching events, newest first, from the snapshot ``query.up_to_seq`` names
        (the log's head when None; the page's ``up_to_seq`` is the one used). The search
        itself is recorded first.

        Raises Forbidden, AuditUnavailable.
        """
        self._require(actor)
        self._audit.record(
            event_for(
                actor,
                Action.AUDIT_QUERY,
                student_id=query.student_id,
                document_id=query.document_id,
                detail=query.describe(),
            )
        )
        f = query.event_filter()
        return self._audit.query(
            actor_email=f.actor_email,
            student_id=f.student_id,
            document_id=f.document_id,
            action=f.action,
            outcome=f.outcome,
            since=f.since,
            until=f.until,
            up_to_seq=f.up_to_seq,
            page=max(1, page),
            per_page=per_page,
        )

    def verify(self, actor: Actor) -> Verification:
        """Recompute the whole log; the result is recorded (outcome error when it fails).

        Raises Forbidden, AuditUnavailable.
        """
        self._require(actor)
        report = self._audit.verify()
        summary = (
            f"ok: {report.events_checked} events, {report.checkpoints_checked} checkpoints"
            if report.ok
            else f"failed at event {report.first_bad_sequence}: {report.detail}"
        )
        self._audit.record(
            event_for(
                actor,
                Action.AUDIT_VERIFY,
                Outcome.ALLOWED if report.ok else Outcome.ERROR,
                detail=summary[:4000],
            )
        )
        return Verification(report, report.latest_checkpoint)

    def latest_checkpoint(self, actor: Actor) -> Checkpoint | None:
        """The newest signed checkpoint in SQL (its signature checked), or None.

        Raises Forbidden, AuditUnavailable, AuditError (a checkpoint that does not verify).
        """
        self._require(actor)
        signed = self._audit.latest_checkpoint()
        return signed.checkpoint if signed is not None else None

    def export(self, actor: Actor, query: TrailQuery, fmt: ExportFormat) -> Iterator[bytes]:
        """The matching events, oldest first, as chunks of CSV or JSON Lines.

        The export is recorded before the first byte is produced (fail closed).
        Raises Forbidden, AuditUnavailable (also while streaming).
        """
        self._require(actor)
        self._audit.record(
            event_for(
                actor,
                Action.AUDIT_EXPORT,
                student_id=query.student_id,
                document_id=query.document_id,
                detail=f"{fmt.value}: {query.describe()}",
            )
        )
        return _chunks(self._audit.events(query.event_filter()), fmt)

    def _require(self, actor: Actor) -> None:
        require(self._audit, actor, Permission.READ_AUDIT, self._clock())


def _chunks(events: Iterator[RecordedEvent], fmt: ExportFormat) -> Iterator[bytes]:
    """Export in batches so the response streams in bounded memory.

    Closing this iterator (a client that goes away) closes ``events`` at once, so the
    database connection it holds goes back to the pool.
    """
    first = True
    try:
        while True:
            batch = list(islice(events, _EXPORT_BATCH))
            if not batch and not first:
                return
            out = io.BytesIO()
            export_events(batch, out, fmt)
            data = out.getvalue()
            if fmt is ExportFormat.CSV and not first:
                # Every batch starts with the header row; the file has it once.
                assert data.startswith(_CSV_HEADER)
                data = data[len(_CSV_HEADER) :]
            first = False
            if data:
                yield data
            if not batch:
                return
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
