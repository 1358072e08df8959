"""Peak memory of one large upload and its download through the whole pipeline.

A multi-page 300 dpi TIFF scan of 1 GB (full scale; 256 MB at small scale) is uploaded
with ``Documents.upload`` (spool, inspection, encryption, multipart PUT to SeaweedFS, SQL
rows and audit event on PostgreSQL) and downloaded with ``Documents.open`` (verifying
pass, then decrypting pass), each in a fresh Python process run as
``python -m tests.benchmarks.test_memory_bench``. The process warms up with a small
document first (imports, connections, keyring), then resets its peak resident set size
(``/proc/self/clear_refs``), and reports the peak (``VmHWM``) minus the resident set size
just before the operation. Uploads and downloads alternate, round by round.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from folders.actor import Actor
from folders.categories import Category
from folders.models import Role
from folders.runtime import Runtime
from tests.benchmarks.conftest import Results, median, scale
from tests.benchmarks.district import (
    add_account,
    open_site,
    scan_page,
    site_environment,
    site_settings,
    tiff_scan,
    write_tiff,
)
from tests.support.s3 import S3Service

pytestmark = [pytest.mark.s3, pytest.mark.postgres]

SIZES_MB = {"smoke": 16, "small": 192, "full": 1024}
ROUNDS = 3
GOAL_MB = 64
# A letter page scanned at 300 dpi, 8-bit grey: 8.4 MB.
WIDTH, HEIGHT, DPI = 2550, 3300, 300
PURPOSE = "Records request from parent"
REPO = Path(__file__).resolve().parents[2]


def write_big_scan(path: Path, megabytes: int) -> None:
    """A TIFF of about ``megabytes`` MB: the same scanned page over and over."""
    page = scan_page(random.Random(1), WIDTH, HEIGHT)
    pages = max(1, megabytes * 1024 * 1024 // len(page))
    with path.open("wb") as out:
        write_tiff(out, (page for _ in range(pages)), WIDTH, HEIGHT, DPI)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(action: str, runtime: Runtime, actor: Actor, target: str) -> dict[str, object]:
    """Warm up, then run ``action`` on ``target`` and report the peak RSS growth."""
    student_id = uuid.UUID(os.environ["BENCH_STUDENT_ID"])
    warm = runtime.documents.upload(
        actor,
        student_id,
        io.BytesIO(tiff_scan(random.Random(2), 2)),
        "warm-up.tif",
        category=Category.OTHER,
        title="Warm-up",
    )
    for _ in runtime.documents.open(actor, warm.id, purpose=PURPOSE).chunks:
        pass
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    started = time.perf_counter()
    if action == "upload":
        with open(target, "rb") as stream:
            info = runtime.documents.upload(
                actor,
                student_id,
                stream,
                "cumulative-folder.tif",
                category=Category.OTHER,
                title="Digitized cumulative folder",
            )
        result: dict[str, object] = {"document_id": str(info.id), "size": info.current.size}
    else:
        opened = runtime.documents.open(actor, uuid.UUID(target), purpose=PURPOSE)
        digest = hashlib.sha256()
        size = 0
        for chunk in opened.chunks:
            digest.update(chunk)
            size += len(chunk)
        assert digest.hexdigest() == opened.version.sha256
        result = {"size": size}
    seconds = time.perf_counter() - started
    growth_kb = _status_kb("VmHWM") - before
    return result | {"growth_mb": growth_kb / 1024, "seconds": seconds}


def measure_in_subprocess(action: str, target: str, env: dict[str, str]) -> dict[str, object]:
    """Run one upload or download in a fresh interpreter; its JSON report."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.test_memory_bench", action, target],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def site(
    tmp_path: Path,
    postgres_database_url: str,
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
) -> Iterator[Runtime]:
    settings = site_settings(
        tmp_path / "site", postgres_database_url, s3_server, s3_bucket, s3_prefix
    ).replace(max_upload_mb=SIZES_MB[scale()] + 64)
    runtime = open_site(settings)
    yield runtime
    runtime.close()


@pytest.mark.slow
def test_peak_memory_of_large_upload_and_download(
    site: Runtime, tmp_path: Path, results: Results
) -> None:
    megabytes = SIZES_MB[scale()]
    scan = tmp_path / "folder.tif"
    write_big_scan(scan, megabytes)
    registrar = add_account(site, "registrar@bench.example", Role.REGISTRAR)
    student = site.students.add_student(registrar, "M-1", "Avery", "Quinn")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    env |= site_environment(site.settings) | {
        "BENCH_REGISTRAR": registrar.email,
        "BENCH_STUDENT_ID": str(student.id),
    }
    uploads, downloads, seconds_up, seconds_down = [], [], [], []
    for _ in range(ROUNDS):
        up = measure_in_subprocess("upload", str(scan), env)
        assert up["size"] == scan.stat().st_size
        down = measure_in_subprocess("download", str(up["document_id"]), env)
        assert down["size"] == scan.stat().st_size
        uploads.append(float(up["growth_mb"]))  # type: ignore[arg-type]
        downloads.append(float(down["growth_mb"]))  # type: ignore[arg-type]
        seconds_up.append(float(up["seconds"]))  # type: ignore[arg-type]
        seconds_down.append(float(down["seconds"]))  # type: ignore[arg-type]
    size = f"{scan.stat().st_size / 2**20:.0f} MiB TIFF"
    if megabytes < 1024:
        size += f" ({scale()} scale: not 1 GB)"
    results.add(
        "upload_1gb_peak_rss_mb",
        median(uploads),
        "MB",
        samples=uploads,
        note=f"{size}; peak RSS growth, goal ≤ {GOAL_MB}",
    )
    results.add(
        "download_1gb_peak_rss_mb",
        median(downloads),
        "MB",
        samples=downloads,
        note=f"{size}; peak RSS growth, goal ≤ {GOAL_MB}",
    )
    mb = scan.stat().st_size / 1e6
    up_rates = [mb / s for s in seconds_up]
    down_rates = [mb / s for s in seconds_down]
    results.add("upload_large_mb_per_s", median(up_rates), "MB/s", samples=up_rates, note=size)
    results.add(
        "download_large_mb_per_s",
        median(down_rates),
        "MB/s",
        samples=down_rates,
        note=f"{size}; two passes (verify, then decrypt) and a SHA-256 check",
    )


def main(argv: list[str]) -> int:
    action, target = argv
    runtime = Runtime(Settings.load())
    actor = runtime.accounts.acting_as(os.environ["BENCH_REGISTRAR"])
    print(json.dumps(_measure(action, runtime, actor, target)))
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
