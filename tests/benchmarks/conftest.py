"""Benchmark plumbing: the scale, and one results table for the whole run.

Every figure is a median over repeated, interleaved runs with its spread, and every
speed is also given as a ratio to a baseline measured in the same run on the same
services. `make bench` prints the table, then where the goals stand (``goals.py``), and
writes both to ``var/bench/results.json``.

``SATCHEL_BENCH_SCALE`` is ``small`` (the default), ``full`` (the sizes of the goals) or
``smoke``: the smallest sizes, which ``make test`` runs so that every benchmark, and the
checks inside it (no 5xx, one audit event per download, a log that verifies), keeps
working; its figures measure nothing and are not saved unless ``SATCHEL_BENCH_RESULTS``
names a file.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from sqlalchemy import Column, Index, MetaData, Table

from audit.models import EVENTS
from folders.runtime import Runtime
from tests.benchmarks.district import open_site, site_settings
from tests.benchmarks.goals import goals_table, judge
from tests.support.s3 import S3Service

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SCALES = ("smoke", "small", "full")


def scale() -> str:
    """The run's scale; raises pytest.UsageError for an unknown one."""
    value = os.environ.get("SATCHEL_BENCH_SCALE", "small")
    if value not in SCALES:
        raise pytest.UsageError(
            f"SATCHEL_BENCH_SCALE must be one of {', '.join(SCALES)}, not {value!r}"
        )
    return value


def results_path() -> Path | None:
    """Where the run's figures are saved: ``SATCHEL_BENCH_RESULTS``, else
    ``var/bench/results.json`` except at smoke scale (not saved)."""
    named = os.environ.get("SATCHEL_BENCH_RESULTS")
    if named:
        return Path(named)
    return None if scale() == "smoke" else Path("var/bench/results.json")


@dataclass
class Figure:
    key: str
    value: float
    unit: str
    spread: str = ""
    note: str = ""


@dataclass
class Results:
    scale: str
    figures: list[Figure] = field(default_factory=list)

    def add(
        self,
        key: str,
        value: float,
        unit: str,
        *,
        samples: list[float] | None = None,
        note: str = "",
    ) -> None:
        spread = ""
        if samples and len(samples) > 1:
            spread = f"{min(samples):.4g}-{max(samples):.4g} (n={len(samples)})"
        self.figures.append(Figure(key, round(value, 4), unit, spread, note))

    def add_median(self, key: str, samples: list[float], unit: str, note: str = "") -> None:
        """:meth:`add` the median of ``samples``, with their spread."""
        self.add(key, median(samples), unit, samples=samples, note=note)

    def table(self) -> str:
        lines = [
            f"Satchel benchmarks, scale {self.scale}",
            "",
            "| key | median | unit | spread (min-max) | note |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{f.key}` | {f.value:.4g} | {f.unit} | {f.spread} | {f.note} |"
            for f in self.figures
        ]
        return "\n".join(lines)


def plain_events_table(name: str) -> Table:
    """A table with ``audit_events``' columns and indexes and nothing else (no trigger,
    lock or hashing): where a baseline writes the same rows the plainest way."""
    table = Table(
        name,
        MetaData(),
        *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in EVENTS.c),
    )
    for index in EVENTS.indexes:
        Index(f"{name}_{index.name}", *(table.c[c.name] for c in index.columns))
    return table


def median(samples: list[float]) -> float:
    return statistics.median(samples)


@dataclass(frozen=True)
class CPU:
    """CPU seconds of this process (all its threads), of the S3 server and of the
    PostgreSQL server: every process named ``weed`` and every one named ``postgres``
    (its backends, WAL writer and checkpointer alike)."""

    client: float
    s3: float
    database: float

    def __sub__(self, other: CPU) -> CPU:
        return CPU(self.client - other.client, self.s3 - other.s3, self.database - other.database)

    def per(self, count: int) -> CPU:
        """In milliseconds per one of ``count`` operations."""
        return CPU(*(1000 * value / count for value in (self.client, self.s3, self.database)))

    @property
    def total(self) -> float:
        return self.client + self.s3 + self.database


def cpu_now() -> CPU:
    """The CPU used so far, read from ``/proc`` (Linux). A process that ended since the
    last reading takes its time with it, so read around work whose processes live on
    (the pools keep their connections)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    by_name = {"weed": 0.0, "postgres": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name, _, rest = stat.partition(" (")[2].rpartition(")")
        if name in by_name:
            fields = rest.split()
            by_name[name] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return CPU(usage.ru_utime + usage.ru_stime, by_name["weed"], by_name["postgres"])


@pytest.fixture(scope="session")
def results() -> Iterator[Results]:
    collected = Results(scale())
    yield collected
    if not collected.figures:
        return
    print("\n" + collected.table() + "\n")
    if collected.scale != "smoke":
        verdicts = judge({f.key: f.value for f in collected.figures}, collected.scale)
        print(f"Goals, scale {collected.scale}\n\n{goals_table(verdicts)}\n")
    path = results_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    merged = (
        {f["key"]: f for f in previous.get("figures", [])}
        if previous.get("scale") == collected.scale
        else {}
    )
    merged |= {f.key: asdict(f) for f in collected.figures}
    # The goals of the file's figures, which may include an earlier run's (see above).
    goals = judge({key: f["value"] for key, f in merged.items()}, collected.scale)
    saved = {
        "scale": collected.scale,
        "figures": list(merged.values()),
        "goals": [asdict(v) | {"status": v.status} for v in goals],
    }
    path.write_text(json.dumps(saved, indent=2) + "\n")


@pytest.fixture
def site(
    tmp_path: Path,
    postgres_database_url: str,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
) -> Iterator[Runtime]:
    """A Satchel installation on the run's PostgreSQL and SeaweedFS."""
    runtime = open_site(
        site_settings(tmp_path / "site", postgres_database_url, s3_server, s3_bucket, s3_prefix)
    )
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def raw_s3_client(s3_server: S3Service) -> S3Client:
    """The baseline: boto3 as anyone would call it, in its stock configuration (checksums
    included) but for the path-style addressing the test server needs."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        config=Config(s3={"addressing_style": "path"}),
    )
