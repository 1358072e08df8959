"""Query latency at district scale, through the service layer and over HTTP.

A synthetic district (:mod:`tests.benchmarks.district`: 100,000 students, 150,000
guardians, 1,000,000 document versions and 5,000,000 audit events at full scale, a tenth
at small scale) is generated in bulk into PostgreSQL. Then, in rounds, three questions
are asked of it, each time about a different, randomly chosen person:

- a guardian's list of shared documents (``SharedInbox.open``; ``GET /guardian/``),
- a registrar's student search (``Students.find_students``; ``GET /registrar/?q=``) by
  family name, full name, partial name or district id,
- a compliance officer's record of disclosures for one student
  (``Disclosures.for_compliance``; ``GET /compliance/students/<id>/disclosures``).

Each figure is the median over the rounds of the round's 50th or 95th percentile.
Over HTTP the requests go one at a time to ``satchel serve`` (gunicorn, two workers).
"""

from __future__ import annotations

import random
import statistics
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from folders.actor import Actor
from folders.models import Role
from folders.runtime import Runtime
from tests.benchmarks.conftest import Results, median, scale
from tests.benchmarks.district import (
    DISTRICT_SIZES,
    FAMILY_NAMES,
    GIVEN_NAMES,
    District,
    Kind,
    entity_id,
    generate_district,
    log_in,
    open_site,
    serving,
    site_settings,
)
from tests.support.db import PostgresServer
from tests.support.s3 import S3Service

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

ROUNDS = 3
QUERIES = {"smoke": 10, "small": 100, "full": 200}  # of each kind per round, through the services
HTTP_QUERIES = {"smoke": 5, "small": 40, "full": 150}  # of each kind per round, over HTTP
WARM_UP = 20  # queries of each kind before the rounds, not counted
HTTP_GUARDIANS = 8  # logged in over HTTP (each login costs an Argon2id rehash)
GOAL_GUARDIAN_LIST_P95_MS = 30
KINDS = ("guardian_list", "student_search", "disclosure_query")

T = TypeVar("T")


@pytest.fixture(scope="module")
def district_site(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    postgres_template: str,
    s3_server: S3Service,
    s3_bucket: str,
) -> Iterator[tuple[Runtime, District, float]]:
    """A site holding the generated district, and the seconds generation took."""
    name = postgres_server.create_database(template=postgres_template)
    directory = tmp_path_factory.mktemp("district")
    runtime = open_site(
        site_settings(
            directory / "site",
            postgres_server.url_for(name),
            s3_server,
            s3_bucket,
            f"district-{uuid.uuid4().hex}/",
        )
    )
    started = time.perf_counter()
    district = generate_district(runtime, DISTRICT_SIZES[scale()])
    seconds = time.perf_counter() - started
    yield runtime, district, seconds
    runtime.close()
    postgres_server.drop_database(name)


def search_term(district: District, rng: random.Random) -> str:
    """What a registrar types: a family name, a full name, part of a name, a district id."""
    number = rng.randrange(district.size.students)
    kind = rng.randrange(4)
    if kind == 0:
        return district.family_name(number)
    if kind == 1:
        return f"{GIVEN_NAMES[(number * 13) % len(GIVEN_NAMES)]} {district.family_name(number)}"
    if kind == 2:
        return rng.choice(FAMILY_NAMES)[1:5].lower()
    return district.district_id(number)


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[94]


def _record(results: Results, suffix: str, rounds: list[dict[str, list[float]]], note: str) -> None:
    for kind in KINDS:
        p50s, p95s = zip(*(_percentiles(r[kind]) for r in rounds), strict=True)
        goal = ""
        if kind == "guardian_list":
            goal = f"; goal ≤ {GOAL_GUARDIAN_LIST_P95_MS} ms at full scale"
        results.add(f"{kind}{suffix}_p50_ms", median(list(p50s)), "ms", samples=list(p50s))
        results.add(
            f"{kind}{suffix}_p95_ms",
            median(list(p95s)),
            "ms",
            samples=list(p95s),
            note=note + goal,
        )


def _timed(latencies: list[float], action: Callable[..., T], *args: object) -> T:
    """``action(*args)``, its duration appended to ``latencies`` in milliseconds."""
    started = time.perf_counter()
    value = action(*args)
    latencies.append((time.perf_counter() - started) * 1000)
    return value


@pytest.mark.slow
def test_district_queries_through_services(
    district_site: tuple[Runtime, District, float], results: Results
) -> None:
    runtime, district, seconds = district_site
    size = district.size
    results.add(
        "district_generate_s",
        seconds,
        "s",
        note=f"{size.students:,} students, {size.guardians:,} guardians, "
        f"{size.versions:,} versions, {size.events:,} audit events (PostgreSQL)",
    )
    rng = random.Random(2025)
    rounds = []
    for round_ in range(ROUNDS + 1):  # round 0 warms the caches and is not counted
        latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(QUERIES[scale()] if round_ else WARM_UP):
            number = rng.randrange(size.guardians)
            guardian = Actor(
                entity_id(Kind.GUARDIAN, number), Role.GUARDIAN, district.guardian_email(number)
            )
            inbox = _timed(latencies["guardian_list"], runtime.inbox.open, guardian)
            assert inbox.items
            term = search_term(district, rng)
            found = _timed(
                latencies["student_search"],
                runtime.students.find_students,
                district.registrar,
                term,
            )
            assert found.total > 0, term
            student = district.student(rng.randrange(size.students))
            record = _timed(
                latencies["disclosure_query"],
                runtime.disclosures.for_compliance,
                district.compliance,
                student,
            )
            assert record.entries.total > 0
        rounds.append(latencies)
    _record(
        results,
        "",
        rounds[1:],
        f"service layer, {QUERIES[scale()]} of each per round, {ROUNDS} rounds",
    )


@pytest.mark.slow
def test_district_queries_over_http(
    district_site: tuple[Runtime, District, float], tmp_path: Path, results: Results
) -> None:
    runtime, district, _ = district_site
    size = district.size
    rng = random.Random(2026)
    with serving(runtime.settings, workers=2, log=tmp_path / "serve.log") as base:
        registrar = log_in(base, district.registrar.email)
        compliance = log_in(base, district.compliance.email)
        guardians = [
            log_in(base, district.guardian_email(number))
            for number in rng.sample(range(size.guardians), HTTP_GUARDIANS)
        ]

        def get(opener: urllib.request.OpenerDirector, path: str) -> bytes:
            with opener.open(base + path, timeout=60) as response:
                assert response.status == 200, path
                return response.read()  # type: ignore[no-any-return]

        rounds = []
        for round_ in range(ROUNDS + 1):  # round 0 warms the workers and is not counted
            latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for i in range(HTTP_QUERIES[scale()] if round_ else WARM_UP):
                guardian = guardians[i % len(guardians)]
                page = _timed(latencies["guardian_list"], get, guardian, "/guardian/")
                assert b"/download" in page
                query = urllib.parse.quote_plus(search_term(district, rng))
                _timed(latencies["student_search"], get, registrar, f"/registrar/?q={query}")
                student = district.student(rng.randrange(size.students))
                path = f"/compliance/students/{student}/disclosures"
                _timed(latencies["disclosure_query"], get, compliance, path)
            rounds.append(latencies)
    _record(
        results,
        "_http",
        rounds[1:],
        f"GET over HTTP, gunicorn 2 workers, {HTTP_QUERIES[scale()]} of each per round, "
        f"{ROUNDS} rounds",
    )
