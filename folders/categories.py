"""The fixed vocabulary of cumulative-folder document categories and their retention rules."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    REPORT_CARD = "report_card"
    TRANSCRIPT = "transcript"
    PROGRESS_REPORT = "progress_report"
    BEHAVIOR = "behavior"
    IEP = "iep"
    PLAN_504 = "plan_504"
    HEALTH = "health"
    IMMUNIZATION = "immunization"
    PERMISSION_SLIP = "permission_slip"
    ATTENDANCE = "attendance"
    ASSESSMENT = "assessment"
    CORRESPONDENCE = "correspondence"
    OTHER = "other"


@dataclass(frozen=True)
class Retention:
    """How long a record is kept after the student leaves the district.

    ``years_after_exit`` of ``None`` means permanent (e.g. transcripts).
    """

    label: str
    years_after_exit: int | None


# Conservative defaults drawn from common state records-retention schedules; a district
# with its own schedule changes these numbers, not the code that applies them.
RETENTION: dict[Category, Retention] = {
    Category.REPORT_CARD: Retention("Report card", 5),
    Category.TRANSCRIPT: Retention("Transcript", None),
    Category.PROGRESS_REPORT: Retention("Progress report", 5),
    Category.BEHAVIOR: Retention("Behavioral evaluation", 5),
    Category.IEP: Retention("IEP", 7),
    Category.PLAN_504: Retention("504 plan", 7),
    Category.HEALTH: Retention("Health record", 7),
    Category.IMMUNIZATION: Retention("Immunization record", None),
    Category.PERMISSION_SLIP: Retention("Permission slip", 1),
    Category.ATTENDANCE: Retention("Attendance record", 5),
    Category.ASSESSMENT: Retention("Assessment", 5),
    Category.CORRESPONDENCE: Retention("Correspondence", 3),
    Category.OTHER: Retention("Other", 5),
}
