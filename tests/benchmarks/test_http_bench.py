"""HTTP under load: many guardians downloading 1 MB documents at once.

``satchel serve`` runs gunicorn with :data:`WORKERS` workers on PostgreSQL and
SeaweedFS. A separate load-generating process (this module run as
``python -m tests.benchmarks.test_http_bench``) logs :data:`GUARDIANS` guardians in
through the login form, then each of them downloads its child's documents in a loop,
one request at a time, for :data:`ROUNDS` windows of 10 s (small scale) or 30 s (full).
A request still running when a window ends is finished and counted, so every download
the server audited is one the client saw.

- ``http_downloads_per_s``: complete 200 responses (every byte received) per second;
- ``http_p99_ms``: 99th percentile of request latency (sent to last byte);
- ``http_5xx``: server errors, all windows together (must be 0);
- ``audit_matches``: whether the audit log gained exactly one allowed
  ``document.download`` event per complete download, and no other download event.
"""

from __future__ import annotations

import http.client
import io
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.events import Action, Outcome
from audit.models import EVENTS
from folders.models import GrantScope, Role
from folders.runtime import Runtime
from tests.benchmarks.conftest import Results, median, scale
from tests.benchmarks.district import (
    PASSWORD,
    add_account,
    scanned_record,
    serving,
)

pytestmark = [pytest.mark.s3, pytest.mark.postgres]

WORKERS = 4
GUARDIANS = 16  # concurrent clients, one guardian each
DOCUMENTS_PER_CHILD = 3
WINDOW_SECONDS = {"smoke": 2.0, "small": 7.0, "full": 30.0}
ROUNDS = 3
REPO = Path(__file__).resolve().parents[2]


def _download_events(runtime: Runtime, after: int) -> Counter[str]:
    """Outcomes of the ``document.download`` events after sequence ``after``."""
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(EVENTS.c.outcome, func.count())
            .where(EVENTS.c.sequence > after, EVENTS.c.action == Action.DOCUMENT_DOWNLOAD.value)
            .group_by(EVENTS.c.outcome)
        ).all()
    return Counter({outcome: count for outcome, count in rows})


def _last_sequence(runtime: Runtime) -> int:
    with runtime.engine.connect() as connection:
        last = connection.scalar(select(func.coalesce(func.max(EVENTS.c.sequence), 0)))
    assert last is not None
    return int(last)


@pytest.mark.slow
def test_guardians_downloading_under_load(site: Runtime, tmp_path: Path, results: Results) -> None:
    registrar = add_account(site, "registrar@bench.example", Role.REGISTRAR)
    rng = random.Random(7)
    plan: list[dict[str, Any]] = []
    for number in range(GUARDIANS):
        email = f"guardian{number}@home.example"
        add_account(site, email, Role.GUARDIAN)
        child = site.students.add_student(registrar, f"H-{number}", "Avery", f"Family {number}")
        site.students.link_guardian(registrar, child.id, email)
        site.grants.grant(registrar, email, child.id, GrantScope.FOLDER)
        documents = {}
        for index in range(DOCUMENTS_PER_CHILD):
            data = scanned_record(rng, 3)  # three scanned pages: about 1.1 MB
            info = site.documents.upload(
                registrar,
                child.id,
                io.BytesIO(data),
                f"report-{index}.pdf",
                category="report_card",
                title=f"Report card {index}",
            )
            documents[str(info.id)] = len(data)
        plan.append({"email": email, "documents": documents})
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    window = WINDOW_SECONDS[scale()]

    with serving(site.settings, workers=WORKERS, log=tmp_path / "serve.log") as base:
        before = _last_sequence(site)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.test_http_bench",
                base,
                str(plan_file),
                str(window),
                str(ROUNDS),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=ROUNDS * window + 300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        events = _download_events(site, before)

    windows = report["windows"]
    rates = [w["ok"] / w["seconds"] for w in windows]
    p99s = [w["p99_ms"] for w in windows]
    downloads = sum(w["ok"] for w in windows)
    server_errors = sum(w["5xx"] for w in windows)
    other = sum(w["other"] for w in windows)
    matches = events[Outcome.ALLOWED.value] == downloads and sum(events.values()) == downloads
    setup = (
        f"gunicorn {WORKERS} workers, {GUARDIANS} guardians at once, 1.1 MB PDFs, "
        f"{ROUNDS} windows of {window:.0f} s"
    )
    results.add("http_downloads_per_s", median(rates), "downloads/s", samples=rates, note=setup)
    results.add(
        "http_mb_per_s",
        median([r * report["mean_size"] / 1e6 for r in rates]),
        "MB/s",
        samples=[r * report["mean_size"] / 1e6 for r in rates],
    )
    p50s = [w["p50_ms"] for w in windows]
    results.add("http_p50_ms", median(p50s), "ms", samples=p50s)
    results.add("http_p99_ms", median(p99s), "ms", samples=p99s, note="sent to last byte")
    results.add(
        "http_5xx",
        server_errors,
        "responses",
        note=f"must be 0; {other} other failures (4xx, connection errors)",
    )
    results.add(
        "audit_matches",
        1.0 if matches else 0.0,
        "1 = true",
        note=f"{downloads} downloads, download events {dict(events)}",
    )
    assert server_errors == 0, report["failures"][:5]
    assert other == 0, report["failures"][:5]
    assert matches, (downloads, events)


# The load-generating process ------------------------------------------------------------


@dataclass
class _Window:
    """What the clients saw in one window."""

    ok: int = 0
    server_errors: int = 0
    other: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    deadline: float = 0.0  # time.monotonic() at which no new request starts
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, seconds: float, complete: bool, failure: str = "") -> None:
        with self.lock:
            self.latencies.append(seconds * 1000)
            if status == 200 and complete:
                self.ok += 1
            elif status >= 500:
                self.server_errors += 1
            else:
                self.other += 1
            if failure:
                self.failures.append(failure)


class _Guardian:
    """One guardian's browser: a session cookie and plain HTTP/1.1 requests."""

    def __init__(self, host: str, port: int, email: str) -> None:
        self._host, self._port, self._email = host, port, email
        self._cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        # gunicorn's sync workers close the connection after each response.
        connection = http.client.HTTPConnection(self._host, self._port, timeout=120)
        try:
            headers = {"User-Agent": "satchel-bench/1"}
            if self._cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self._cookies[key.strip()] = rest.split(";", 1)[0]
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def log_in(self) -> None:
        status, _, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert status == 200 and token is not None, status
        form = urllib.parse.urlencode(
            {"email": self._email, "password": PASSWORD, "csrf_token": token.group(1).decode()}
        ).encode()
        status, headers, _ = self.request("POST", "/login", form)
        assert status == 302 and "/guardian/" in headers.get("location", ""), status


def _browse(
    guardian: _Guardian, documents: dict[str, int], window: _Window, barrier: threading.Barrier
) -> None:
    """Download the child's documents in turn until the window's deadline."""
    barrier.wait()
    ids = list(documents)
    turn = 0
    while time.monotonic() < window.deadline:
        document = ids[turn % len(ids)]
        turn += 1
        started = time.perf_counter()
        try:
            status, _, body = guardian.request("GET", f"/guardian/documents/{document}/download")
        except (OSError, http.client.HTTPException) as e:
            window.add(0, time.perf_counter() - started, False, f"{type(e).__name__}: {e}")
            continue
        complete = len(body) == documents[document]
        failure = "" if status == 200 and complete else f"{status}: {body[:200]!r}"
        window.add(status, time.perf_counter() - started, complete, failure)


def _load(base: str, plan: list[dict[str, Any]], seconds: float, rounds: int) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    guardians = [_Guardian(parts.hostname, parts.port, p["email"]) for p in plan]
    for guardian in guardians:
        guardian.log_in()
    windows = []
    failures: list[str] = []
    for _ in range(rounds):
        window = _Window()

        def start(window: _Window = window) -> None:
            window.deadline = time.monotonic() + seconds

        barrier = threading.Barrier(len(guardians) + 1, action=start)
        threads = [
            threading.Thread(target=_browse, args=(g, p["documents"], window, barrier))
            for g, p in zip(guardians, plan, strict=True)
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cuts = statistics.quantiles(window.latencies, n=100, method="inclusive")
        windows.append(
            {
                "seconds": elapsed,
                "ok": window.ok,
                "5xx": window.server_errors,
                "other": window.other,
                "p50_ms": cuts[49],
                "p99_ms": cuts[98],
            }
        )
        failures += window.failures
    sizes = [size for p in plan for size in p["documents"].values()]
    return {"windows": windows, "failures": failures, "mean_size": statistics.mean(sizes)}


def main(argv: list[str]) -> int:
    base, plan_file, seconds, rounds = argv
    plan = json.loads(Path(plan_file).read_text())
    print(json.dumps(_load(base, plan, float(seconds), int(rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
