"""Small helpers shared by the role blueprints: request parsing and template filters."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from flask import Blueprint, request

from folders.categories import RETENTION, Category
from folders.grants import GrantInfo, GrantStatus
from folders.models import GrantScope

MAX_PAGE_DIGITS = 6  # page 999,999 at most: far past any real list, and cheap to parse


MAX_SEQUENCE = 2**63 - 1  # the audit log numbers events in a signed 64-bit column


def snapshot_bound() -> int | None:
    """The ``upto`` query parameter: the audit snapshot the later pages of a list of
    events are read from (``Page.up_to_seq`` of its first page).

    Absent or empty is None (read the log as it is now); ValueError for anything but an
    ASCII decimal from 1 to :data:`MAX_SEQUENCE`.
    """
    raw = request.args.get("upto", "").strip()
    if not raw:
        return None
    # isascii() keeps out other scripts' digits, which int() would take; the length
    # bound keeps int() cheap before the range check.
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_SEQUENCE)):
        bound = int(raw)
        if 1 <= bound <= MAX_SEQUENCE:
            return bound
    raise ValueError(f"not an event number: {raw[:40]!r}")


def page_number() -> int:
    """The ``page`` query parameter as a positive number.

    Only plain ASCII decimals of at most :data:`MAX_PAGE_DIGITS` digits count; anything
    else (absent, empty, ``0``, ``-1``, ``²``, Arabic-Indic digits, a thousand nines) is
    page 1. A page past the last is for the service to clamp.
    """
    raw = request.args.get("page", "1")
    # str.isdigit() alone also accepts superscripts and other scripts' digits, some of
    # which int() refuses (a 500 on every list); isascii() leaves just 0-9. The length
    # bound keeps int() from meeting its 4,300-digit limit or doing needless work.
    if raw.isascii() and raw.isdigit() and len(raw) <= MAX_PAGE_DIGITS:
        return max(int(raw), 1)
    return 1


def form_text(name: str) -> str:
    return request.form.get(name, "").strip()


def end_of_day(day: date) -> datetime:
    """The last second of ``day`` in UTC: access "until" a date includes that day."""
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


def start_of_day(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


def parse_day(text: str) -> date | None:
    """``YYYY-MM-DD`` or empty; ValueError for anything else."""
    return date.fromisoformat(text) if text else None


def when(moment: datetime | None) -> str:
    """A timestamp as shown on every page: minutes, UTC, unambiguous."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def category_label(category: Category | str | None) -> str:
    if category is None:
        return ""
    try:
        return RETENTION[Category(category)].label
    except ValueError:
        return str(category)


def scope_phrase(grant: GrantInfo) -> str:
    """What a grant covers, as it reads in a sentence."""
    if grant.scope is GrantScope.FOLDER:
        return "the whole folder"
    if grant.scope is GrantScope.CATEGORY:
        return f"the category {category_label(grant.category)}"
    return f"the document “{grant.document_title}”"


def until_text(grant: GrantInfo) -> str:
    """ " until YYYY-MM-DD" for a grant that expires, else nothing."""
    return f" until {grant.expires_at:%Y-%m-%d}" if grant.expires_at else ""


_WHY_UNSEEN = {
    GrantStatus.GUARDIAN_RESTRICTED: "while restricted",
    GrantStatus.GUARDIAN_UNLINKED: "while no longer linked as a guardian",
}


def why_unseen(status: GrantStatus) -> str:
    """Why a grant listed with the active ones gives its guardian nothing, for a sentence."""
    return _WHY_UNSEEN.get(status, f"({status.value})")


def register_filters(bp: Blueprint) -> None:
    bp.add_app_template_filter(when, "when")
    bp.add_app_template_filter(size, "size")
    bp.add_app_template_filter(category_label, "category_label")
    bp.add_app_template_filter(scope_phrase, "scope_phrase")
    bp.add_app_template_filter(why_unseen, "why_unseen")
