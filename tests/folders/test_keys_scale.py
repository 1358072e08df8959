"""Key rotation at scale: 1,000 versions on PostgreSQL and SeaweedFS, no object rewritten."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from folders.actor import Actor
from folders.categories import Category
from folders.runtime import Runtime
from tests.support import samples
from tests.support.people import Cast

OPERATOR = Actor.operator()


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    """This scale test runs once, on PostgreSQL; the key tests run on both databases."""
    return postgres_database_url


def etags(runtime: Runtime) -> dict[str, str | None]:
    return {info.key: info.etag for info in runtime.store.list("versions/")}


@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.slow
def test_rotation_over_1000_versions_rewrites_no_object(s3_runtime: Runtime, cast: Cast) -> None:
    runtime = s3_runtime
    scan = samples.make_png(8, 8)

    def upload(i: int) -> None:
        runtime.documents.upload(
            cast.registrar,
            cast.child.id,
            io.BytesIO(scan),
            f"page-{i}.png",
            category=Category.ATTENDANCE,
            title=f"Attendance sheet {i}",
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(upload, range(1000)))
    before = etags(runtime)
    assert len(before) == 1000
    assert runtime.keys.status(OPERATOR)[0].data_keys == 1000

    seen: list[tuple[int, int]] = []
    result = runtime.keys.rotate(
        OPERATOR, batch_size=128, progress=lambda done, total: seen.append((done, total))
    )
    assert (result.active_version, result.rewrapped, result.remaining) == (2, 1000, 0)
    assert seen[-1] == (1000, 1000) and len(seen) == 8
    assert etags(runtime) == before  # not one object was rewritten
    status = {s.version: s.data_keys for s in runtime.keys.status(OPERATOR)}
    assert status == {1: 0, 2: 1000}

    runtime.keys.retire_below(OPERATOR, 2)
    documents = runtime.documents.list_folder(cast.registrar, cast.child.id)
    assert len(documents) == 1000
    for document in documents:
        opened = runtime.documents.open(cast.registrar, document.id, purpose="key rotation check")
        assert b"".join(opened.chunks) == scan
