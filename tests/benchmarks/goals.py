"""The benchmark goals, and where a run's figures stand against them.

A goal names a figure, a bound and whether the figure must be at least or at most that
bound. Some goals are stated for the full scale only (a 1 GB file, a district of 100,000
students, a log of 1,000,000 events): at a smaller scale the figure is shown but not
judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    key: str
    bound: float
    at_least: bool
    full_scale_only: bool = False
    shown: str = ""  # the target as written in the table, when not "≥ bound" or "≤ bound"

    @property
    def text(self) -> str:
        """The goal as written in the table: "≥ 0.85", "≤ 30", "= 0"."""
        return self.shown or f"{'≥' if self.at_least else '≤'} {self.bound:,.6g}"

    def met_by(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound


GOALS = (
    Goal("ingest_ratio", 0.85, at_least=True),
    Goal("read_ratio", 0.85, at_least=True),
    Goal("audit_appends_per_s_pg_1", 2000, at_least=True),
    Goal("audit_verify_events_per_s", 200_000, at_least=True, full_scale_only=True),
    Goal("guardian_list_p95_ms", 30, at_least=False, full_scale_only=True),
    Goal("upload_1gb_peak_rss_mb", 64, at_least=False, full_scale_only=True),
    Goal("download_1gb_peak_rss_mb", 64, at_least=False, full_scale_only=True),
    Goal("http_5xx", 0, at_least=False, shown="= 0"),
    Goal("audit_matches", 1, at_least=True, shown="= 1 (true)"),
    # The storage pipeline alone (store and open one file, no SQL or audit) against boto3.
    Goal("pipeline_upload_ratio", 0.85, at_least=True),
    Goal("pipeline_read_ratio", 0.85, at_least=True),
)


@dataclass(frozen=True)
class Verdict:
    """Where one goal stands: ``met`` is None when the figure was not measured, or the
    goal is not judged at this scale."""

    key: str
    goal: str
    value: float | None
    met: bool | None

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        if self.met is None:
            return "not judged (a full-scale goal)"
        return "met" if self.met else "NOT MET"


def judge(figures: Mapping[str, float], scale: str) -> list[Verdict]:
    """Every goal against ``figures`` (key → median) of a run at ``scale``."""
    verdicts = []
    for goal in GOALS:
        value = figures.get(goal.key)
        judged = value is not None and (scale == "full" or not goal.full_scale_only)
        met = goal.met_by(value) if judged and value is not None else None
        verdicts.append(Verdict(goal.key, goal.text, value, met))
    return verdicts


def goals_table(verdicts: list[Verdict]) -> str:
    """The verdicts as a markdown table."""
    lines = ["| goal | median | target | status |", "|---|---|---|---|"]
    for v in verdicts:
        value = "" if v.value is None else f"{v.value:.4g}"
        lines.append(f"| `{v.key}` | {value} | {v.goal} | {v.status} |")
    return "\n".join(lines)
