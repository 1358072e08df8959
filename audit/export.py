"""Exports of audit events for compliance staff and outside auditors.

- **JSON Lines**: one event per line, each line byte for byte the stored canonical entry,
  so ``SHA-256(0x00 || line)`` is the event's leaf hash and ``satchel audit prove`` output
  can be checked against it. Lines end with a single LF.
- **CSV** (RFC 4180, UTF-8, CRLF): one header row, then one row per event, for
  spreadsheets. A cell that a spreadsheet would run as a formula (starting with ``=``,
  ``+``, ``-``, ``@``, tab or carriage return) is prefixed with ``'``, because several
  fields (user agent, detail) are chosen by whoever made the request. The JSONL export
  is the exact record; CSV is for reading.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from enum import StrEnum
from typing import BinaryIO

from audit.events import PAYLOAD_FIELDS, RecordedEvent, event_values, format_time

__all__ = ["CSV_COLUMNS", "ExportFormat", "export_events"]

CSV_COLUMNS = ("sequence", "time", *PAYLOAD_FIELDS, "leaf_hash")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FLUSH_ROWS = 1000


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def export_events(events: Iterable[RecordedEvent], out: BinaryIO, fmt: ExportFormat) -> int:
    """Write ``events`` to ``out`` in ``fmt``, streaming; return how many were written.

    Exceptions from ``events`` (e.g. :class:`~audit.errors.AuditUnavailable`) and from
    ``out`` propagate; what was written before stays written.
    """
    if fmt is ExportFormat.JSONL:
        count = 0
        for recorded in events:
            out.write(recorded.entry + b"\n")
            count += 1
        return count
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for recorded in events:
        values = event_values(recorded.event)
        writer.writerow(
            [
                str(recorded.sequence),
                format_time(recorded.recorded_at),
                *("" if value is None else _defused(value) for value in values),
                recorded.leaf_hash.hex(),
            ]
        )
        count += 1
        if count % _FLUSH_ROWS == 0:
            out.write(buffer.getvalue().encode("utf-8"))
            buffer.seek(0)
            buffer.truncate()
    out.write(buffer.getvalue().encode("utf-8"))
    return count


def _defused(value: str) -> str:
    # SECURITY: keeps a hostile user agent or detail from running as a spreadsheet formula.
    return "'" + value if value.startswith(_FORMULA_STARTS) else value
