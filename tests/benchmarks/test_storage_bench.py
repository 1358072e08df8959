"""The storage pipeline against raw boto3 on the same SeaweedFS, in the same run.

Upload: Vault.store_file (size limit, spool, inspection, SHA-256, encryption, put) vs a
plain ``put_object`` of the same bytes. Read: unwrap + authenticate + decrypt vs a plain
``get_object``. Runs are interleaved and the order alternates each round.
"""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.envelope import ObjectIdentity
from storage.ingest import SealedRef, Vault
from storage.keyring import Keyring
from storage.objects import S3ObjectStore
from tests.benchmarks.conftest import Results, median, scale
from tests.support import samples

pytestmark = pytest.mark.s3


def documents(count: int) -> list[tuple[str, bytes]]:
    """About 1 MB each: a mix of multi-page PDFs and TIFF scans."""
    docs = []
    for i in range(count):
        if i % 2:
            docs.append((f"scan-{i}.tif", samples.make_tiff(pages=4, width=512, height=512)))
        else:
            text = f"Report of student {i} " * 4000
            docs.append((f"record-{i}.pdf", samples.make_pdf(pages=8, text=text)))
    return docs


def test_pipeline_vs_raw_s3(
    s3_store: S3ObjectStore,
    raw_s3_client: object,
    s3_bucket: str,
    s3_prefix: str,
    tmp_path: Path,
    results: Results,
) -> None:
    count, rounds = {"smoke": (6, 2), "small": (24, 5), "full": (100, 7)}[scale()]
    docs = documents(count)
    total_mb = sum(len(d) for _, d in docs) / 1e6
    keyring = Keyring.create(tmp_path / "keyring.json", now=datetime.now(UTC))
    vault = Vault(s3_store, keyring, max_bytes=64 * 1024 * 1024, spool_dir=tmp_path)
    client = raw_s3_client

    def raw_put(tag: str) -> list[str]:
        keys = [f"{s3_prefix}raw/{tag}/{i}" for i in range(count)]
        for key, (_, data) in zip(keys, docs, strict=True):
            client.put_object(Bucket=s3_bucket, Key=key, Body=data)  # type: ignore[attr-defined]
        return keys

    def vault_put() -> list[SealedRef]:
        refs = []
        for name, data in docs:
            identity = ObjectIdentity(str(uuid.uuid4()), str(uuid.uuid4()))
            stored = vault.store_file(io.BytesIO(data), name, identity, f"v/{uuid.uuid4()}")
            refs.append(
                SealedRef(
                    stored.object_key,
                    identity,
                    stored.wrapped_dek,
                    stored.key_id,
                    stored.key_version,
                )
            )
        return refs

    def raw_get(keys: list[str]) -> None:
        for key in keys:
            body = client.get_object(Bucket=s3_bucket, Key=key)["Body"]  # type: ignore[attr-defined]
            body.read()
            body.close()

    def vault_get(refs: list[SealedRef]) -> None:
        for ref in refs:
            for _ in vault.open_file(ref):
                pass

    def timed(action: object, *args: object) -> tuple[float, object]:
        start = time.perf_counter()
        value = action(*args)  # type: ignore[operator]
        return time.perf_counter() - start, value

    raw_up, sat_up, raw_down, sat_down = [], [], [], []
    raw_put("warmup")
    vault_put()
    for round_ in range(rounds):
        order = ["raw", "satchel"] if round_ % 2 == 0 else ["satchel", "raw"]
        for who in order:
            if who == "raw":
                seconds, keys = timed(raw_put, f"r{round_}")
                raw_up.append(total_mb / seconds)
                seconds, _ = timed(raw_get, keys)
                raw_down.append(total_mb / seconds)
            else:
                seconds, refs = timed(vault_put)
                sat_up.append(total_mb / seconds)
                seconds, _ = timed(vault_get, refs)
                sat_down.append(total_mb / seconds)

    up_ratios = [s / r for s, r in zip(sat_up, raw_up, strict=True)]
    down_ratios = [s / r for s, r in zip(sat_down, raw_down, strict=True)]
    note = f"{count} docs, {total_mb:.1f} MB per run, {rounds} rounds"
    results.add("pipeline_upload_mb_per_s", median(sat_up), "MB/s", samples=sat_up, note=note)
    results.add("raw_put_mb_per_s", median(raw_up), "MB/s", samples=raw_up, note="boto3 put_object")
    results.add(
        "pipeline_upload_ratio", median(up_ratios), "x raw", samples=up_ratios, note="goal ≥ 0.85"
    )
    results.add("pipeline_read_mb_per_s", median(sat_down), "MB/s", samples=sat_down, note=note)
    results.add(
        "raw_get_mb_per_s", median(raw_down), "MB/s", samples=raw_down, note="boto3 get_object"
    )
    results.add(
        "pipeline_read_ratio", median(down_ratios), "x raw", samples=down_ratios, note="goal ≥ 0.85"
    )
    assert all(r > 0 for r in up_ratios + down_ratios)
