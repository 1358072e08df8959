"""Root pytest configuration: fixture modules under ``tests/support``, and a summary of
how many tests ran against each real service."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.support.db",
    "tests.support.app",
    "tests.support.browser",
    "tests.support.s3",
    "tests.support.people",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench", action="store_true", help="collect the benchmarks in tests/benchmarks"
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Benchmarks are measured by `make bench`, not run with the test suite."""
    if "benchmarks" in collection_path.parts and not config.getoption("--bench"):
        return True
    return None


SERVICE_MARKERS = {"postgres": "PostgreSQL", "s3": "S3 (SeaweedFS)", "browser": "browser"}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call" and outcome == "passed":
                continue
            keywords = getattr(report, "keywords", {})
            for marker in SERVICE_MARKERS:
                if marker in keywords:
                    counts[(marker, outcome)] += 1
    if not counts:
        return
    terminalreporter.section("real services")
    for marker, label in SERVICE_MARKERS.items():
        parts = [
            f"{counts[(marker, o)]} {o}"
            for o in ("passed", "failed", "skipped", "error")
            if counts[(marker, o)]
        ]
        terminalreporter.write_line(f"{label} tests: {', '.join(parts) or 'none ran'}")
