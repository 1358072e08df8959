"""What an object below the multipart threshold costs on S3: one PUT request carrying the
whole body at once, checksummed, without an Expect: 100-continue round trip."""

from __future__ import annotations

import io
import os
import tracemalloc
from typing import TYPE_CHECKING

import pytest
from minio import Minio

from storage.objects import S3ObjectStore
from tests.support.s3 import S3Service

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest

pytestmark = pytest.mark.s3


@pytest.mark.parametrize("size", [0, 3 * 1024 * 1024])
def test_a_small_object_is_sent_whole_in_one_request(
    s3_server: S3Service,
    s3_bucket: str,
    s3_prefix: str,
    minio_client: Minio,
    size: int,
) -> None:
    data = os.urandom(size)
    client = s3_server.client()
    requests: list[AWSPreparedRequest] = []

    def record(request: AWSPreparedRequest, **kwargs: object) -> None:
        requests.append(request)

    client.meta.events.register("before-send.s3", record)
    store = S3ObjectStore(client, s3_bucket, s3_prefix)

    info = store.put("small/object", io.BufferedReader(io.BytesIO(data)), size)

    [request] = requests
    assert request.method == "PUT"
    # The body goes out in one piece (not as a stream read back in blocks), with no
    # wait for the server's permission to send it.
    assert not hasattr(request.body, "read") and bytes(request.body or b"") == data
    assert "Expect" not in request.headers
    assert "x-amz-checksum-crc32" in request.headers
    assert info.size == size
    stored = minio_client.get_object(s3_bucket, f"{s3_prefix}small/object")
    try:
        assert stored.read() == data
    finally:
        stored.close()
        stored.release_conn()


def test_a_small_object_is_held_once_in_memory(s3_store: S3ObjectStore) -> None:
    size = 4 * 1024 * 1024
    stream = io.BufferedReader(io.BytesIO(os.urandom(size)))
    tracemalloc.start()
    try:
        info = s3_store.put("small/object", stream, size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == size
    # The body is read into the buffer that is sent, not read and then copied there.
    assert peak < 1.25 * size, f"peak traced memory {peak / size:.2f} times the object"
