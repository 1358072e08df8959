"""The object store contract, run against every backend, plus what each adds.

:class:`ObjectStoreContract` holds the tests every :class:`ObjectStore` must pass; a
backend reuses them by subclassing with a ``store`` fixture. The S3 backend runs against
a real SeaweedFS server, and an independent client (the minio SDK) checks what the
bucket really holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import resource
import signal
import ssl
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import botocore.utils
import pytest
import urllib3
from botocore.response import StreamingBody
from botocore.stub import Stubber
from minio import Minio
from minio.error import S3Error

from storage.errors import ObjectNotFound, StorageError, StorageUnavailable
from storage.objects import (
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    make_s3_client,
    parse_s3_timestamp,
)
from tests.support.s3 import S3Service
from tests.support.seaweedfs import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
BIG = 20 * MIB  # above the S3 store's 8 MiB multipart threshold: three parts

BAD_KEYS = [
    "",
    ".",
    "..",
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a//b",
    "a/",
    "a\\b",
    "a\0b",
    ".hidden",
    "a/.tmp-x",
    "sp ace",
    "x" * 513,
]


class StreamBroke(Exception):
    """Raised by a test stream to simulate a client or disk failing mid-upload."""


class ReadOnlyStream:
    """A non-seekable source: it has ``read()`` and nothing else (like a socket)."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 7,
        fail_after: int | None = None,
        before_failing: Callable[[], object] | None = None,
    ) -> None:
        self._random = random.Random(seed)
        self._left = size
        self._sent = 0
        self._fail_after = fail_after
        self._before_failing = before_failing
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if self._fail_after is not None and self._sent >= self._fail_after:
            if self._before_failing is not None:
                self._before_failing()
            raise StreamBroke(f"source failed after {self._sent} bytes")
        n = self._left if n is None or n < 0 else min(n, self._left)
        chunk = self._random.randbytes(n)
        self._left -= n
        self._sent += n
        self.digest.update(chunk)
        return chunk


def as_stream(source: ReadOnlyStream) -> BinaryIO:
    return cast(BinaryIO, source)


def read_all(store: ObjectStore, key: str) -> bytes:
    with store.open(key) as stream:
        return stream.read()


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStoreContract:
    """Tests every object store passes. Subclasses provide a ``store`` fixture that
    returns an empty store without retention support."""

    @pytest.mark.parametrize("data", [b"", b"x", b"hello, folder\n" * 1000], ids=len)
    def test_put_then_open_returns_the_same_bytes(self, store: ObjectStore, data: bytes) -> None:
        info = store.put("docs/one", io.BytesIO(data), len(data))

        with store.open("docs/one") as stream:
            assert stream.read() == data
        assert info.key == "docs/one"
        assert info.size == len(data)

    def test_large_object_streams_from_a_non_seekable_reader(self, store: ObjectStore) -> None:
        source = ReadOnlyStream(BIG)

        info = store.put("docs/big", as_stream(source))

        assert info.size == BIG
        assert sha256_of(store.open("docs/big")) == source.digest.hexdigest()

    def test_open_reads_in_chunks(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * 1000
        store.put("docs/chunks", io.BytesIO(data))

        with store.open("docs/chunks") as stream:
            pieces = [stream.read(1000) for _ in range(256)]
            assert stream.read(1) == b""
        assert b"".join(pieces) == data
        assert stream.closed

    def test_head_reports_what_put_stored(self, store: ObjectStore) -> None:
        before = datetime.now(UTC)
        put_info = store.put("docs/head", io.BytesIO(b"12345"))

        head_info = store.head("docs/head")

        # put may take its timestamp from the response rather than a second request.
        assert (head_info.key, head_info.size, head_info.etag) == (
            put_info.key,
            put_info.size,
            put_info.etag,
        )
        assert abs(head_info.last_modified - put_info.last_modified) <= timedelta(seconds=2)
        assert head_info.size == 5
        assert head_info.etag
        assert head_info.last_modified.tzinfo is not None
        # Timestamps may be truncated to whole seconds.
        assert before - timedelta(seconds=2) <= head_info.last_modified
        assert head_info.last_modified <= datetime.now(UTC) + timedelta(seconds=2)

    def test_overwrite_replaces_content_and_etag(self, store: ObjectStore) -> None:
        first = store.put("docs/twice", io.BytesIO(b"first version"))

        second = store.put("docs/twice", io.BytesIO(b"second, longer version"))

        assert second.etag != first.etag
        assert store.head("docs/twice").etag == second.etag
        assert read_all(store, "docs/twice") == b"second, longer version"

    def test_missing_key_is_object_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound) as opened:
            store.open("docs/absent")
        with pytest.raises(ObjectNotFound) as headed:
            store.head("docs/absent")

        assert opened.value.key == headed.value.key == "docs/absent"

    def test_delete_removes_and_tolerates_missing(self, store: ObjectStore) -> None:
        store.put("docs/gone", io.BytesIO(b"bye"))

        store.delete("docs/gone")
        store.delete("docs/gone")
        store.delete("never/was")

        with pytest.raises(ObjectNotFound):
            store.head("docs/gone")
        assert list(store.list()) == []

    @pytest.mark.parametrize(
        "size, hint",
        [(1000, 10), (1000, 5000), (0, 100), (1000, 0), (1000, 1000), (9 * MIB, 1000)],
        ids=["too small", "too large", "empty", "zero", "exact", "past the threshold"],
    )
    def test_a_wrong_size_hint_still_stores_every_byte(
        self, store: ObjectStore, size: int, hint: int
    ) -> None:
        source = ReadOnlyStream(size)

        info = store.put("docs/hinted", as_stream(source), hint)

        assert info.size == size == store.head("docs/hinted").size
        assert sha256_of(store.open("docs/hinted")) == source.digest.hexdigest()

    def test_list_filters_by_prefix(self, store: ObjectStore) -> None:
        for key, size in [("b/4", 4), ("a/2", 2), ("ab/3", 3), ("a/1", 1), ("a-z", 5)]:
            store.put(key, io.BytesIO(b"x" * size))

        assert sorted((i.key, i.size) for i in store.list("a/")) == [("a/1", 1), ("a/2", 2)]
        assert sorted(i.key for i in store.list("a")) == ["a-z", "a/1", "a/2", "ab/3"]
        assert sorted(i.key for i in store.list()) == ["a-z", "a/1", "a/2", "ab/3", "b/4"]
        assert list(store.list("c/")) == []

    @pytest.mark.parametrize("size,fail_after", [(10_000, 4_000), (BIG, 12 * MIB)])
    def test_failed_put_leaves_no_object(
        self, store: ObjectStore, size: int, fail_after: int
    ) -> None:
        with pytest.raises(StreamBroke):
            store.put("docs/partial", as_stream(ReadOnlyStream(size, fail_after=fail_after)))

        with pytest.raises(ObjectNotFound):
            store.head("docs/partial")
        assert list(store.list()) == []

    def test_failed_overwrite_keeps_the_previous_object(self, store: ObjectStore) -> None:
        store.put("docs/kept", io.BytesIO(b"the good copy"))

        with pytest.raises(StreamBroke):
            store.put("docs/kept", as_stream(ReadOnlyStream(BIG, fail_after=12 * MIB)))

        assert read_all(store, "docs/kept") == b"the good copy"

    @pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
    def test_bad_keys_are_rejected(self, store: ObjectStore, key: str) -> None:
        operations: list[Callable[[], object]] = [
            lambda: store.put(key, io.BytesIO(b"x")),
            lambda: store.open(key),
            lambda: store.head(key),
            lambda: store.delete(key),
        ]
        for operation in operations:
            with pytest.raises(ValueError, match="invalid object key"):
                operation()

    @pytest.mark.parametrize("prefix", ["..", "../", "/", "/abs", "a//", "a\\"])
    def test_bad_list_prefixes_are_rejected(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(ValueError, match="invalid object key prefix"):
            list(store.list(prefix))

    def test_retention_is_refused_when_unsupported(self, store: ObjectStore) -> None:
        assert store.supports_retention() is False

        with pytest.raises(StorageError, match="retain"):
            store.put(
                "docs/locked",
                io.BytesIO(b"keep me"),
                retain_until=datetime.now(UTC) + timedelta(days=1),
            )

        with pytest.raises(ObjectNotFound):
            store.head("docs/locked")


class TestLocalObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalObjectStore:
        return LocalObjectStore(tmp_path / "objects")

    def test_files_are_private(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path / "objects")

        store.put("deep/er/key", io.BytesIO(b"secret"))

        root = tmp_path / "objects"
        for path in (root, root / "deep", root / "deep" / "er"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        assert stat.S_IMODE((root / "deep" / "er" / "key").stat().st_mode) == 0o600
        assert store.description == f"local:{root}"

    def test_failed_put_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path / "objects")

        with pytest.raises(StreamBroke):
            store.put("docs/partial", as_stream(ReadOnlyStream(MIB * 3, fail_after=MIB)))

        assert os.listdir(tmp_path / "objects" / "docs") == []

    def test_a_full_disk_is_an_unavailable_store_and_leaves_nothing(self, tmp_path: Path) -> None:
        """The file-size limit makes the kernel refuse writes past it (EFBIG), as a full
        disk refuses them (ENOSPC): a real failure of the file system, not a stand-in."""
        store = LocalObjectStore(tmp_path / "objects")
        store.put("docs/kept", io.BytesIO(b"an object stored before"))
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death
        resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, limits[1]))
        try:
            with pytest.raises(StorageUnavailable, match="cannot write 'docs/big'") as raised:
                store.put("docs/big", io.BytesIO(bytes(2 * MIB)))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)

        assert raised.value.public_message == "The document store is unavailable; try again later."
        assert sorted(os.listdir(tmp_path / "objects" / "docs")) == ["kept"]
        assert read_all(store, "docs/kept") == b"an object stored before"

    def test_a_directory_is_not_an_object(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path / "objects")
        store.put("docs/inner", io.BytesIO(b"x"))

        with pytest.raises(ObjectNotFound):
            store.open("docs")
        with pytest.raises(ObjectNotFound):
            store.head("docs")
        store.delete("docs")
        assert store.head("docs/inner").size == 1

    def test_unwritable_root_is_a_storage_error(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_bytes(b"")

        with pytest.raises(StorageError, match="local:"):
            LocalObjectStore(tmp_path / "file" / "objects")


class RecordedOperations:
    """The S3 operations a boto3 client sends, observed through botocore's events."""

    def __init__(self, client: S3Client) -> None:
        self.names: list[str] = []
        client.meta.events.register("before-send.s3", self._record)

    def _record(self, event_name: str, **_: Any) -> None:
        self.names.append(event_name.rsplit(".", 1)[-1])


@pytest.mark.s3
class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, s3_store: S3ObjectStore) -> S3ObjectStore:
        return s3_store


@pytest.mark.parametrize(
    "text",
    [
        "Wed, 12 Oct 2009 17:50:00 GMT",  # Last-Modified and other HTTP dates
        "Mon, 24 Nov 2025 08:05:09 GMT",
        "2009-10-12T17:50:00.000Z",  # ISO 8601 in XML bodies (ListObjectsV2)
        "2025-11-24T08:05:09.123456Z",
        "2025-11-24T08:05:09+02:00",
        "1700000000",  # epoch seconds, which botocore also accepts
        "Wed, 12 Oct 2009 17:50:00 -0000",  # an HTTP date that names no zone
        "2009-10-12T17:50:00",  # ISO 8601 without a zone
        "12 October 2009 5:50 pm UTC",  # anything else dateutil reads
    ],
)
def test_s3_timestamps_read_as_botocores_own_parser_reads_them(text: str) -> None:
    parsed = parse_s3_timestamp(text)
    expected = botocore.utils.parse_timestamp(text)
    assert parsed == expected
    assert (parsed.tzinfo is None) == (expected.tzinfo is None)


def test_an_s3_timestamp_botocore_refuses_is_refused() -> None:
    with pytest.raises(ValueError):
        botocore.utils.parse_timestamp("not a time")
    with pytest.raises(ValueError):
        parse_s3_timestamp("not a time")


class BrokenSocketFile(io.RawIOBase):
    """What urllib3 reads a response body from: ``first``, then ``error`` on every read,
    as from a socket whose connection broke mid-transfer."""

    def __init__(self, first: bytes, error: Exception) -> None:
        super().__init__()
        self._first = first
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._first:
            raise self._error
        count = min(len(buffer), len(self._first))
        buffer[:count] = self._first[:count]
        self._first = self._first[count:]
        return count


UNREACHABLE = "https://s3.school.example"


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (
            ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed"),
            ("the TLS connection failed while the object was being received", "BAD_RECORD_MAC"),
        ),
        (ConnectionResetError(104, "Connection reset by peer"), ("Connection reset by peer",)),
        (TimeoutError("The read operation timed out"), ("Read timeout",)),
    ],
    ids=["tls", "reset", "timeout"],
)
def test_a_connection_failing_mid_read_is_an_unavailable_store(
    error: Exception, fragments: tuple[str, ...]
) -> None:
    """The body of a GET is read after botocore has returned, through urllib3's own
    response, whose failures botocore wraps only in part. The failure is injected where the
    network would raise it: under urllib3 and botocore's StreamingBody, both real."""
    size = 1000
    response = urllib3.HTTPResponse(
        body=BrokenSocketFile(b"head", error),
        headers={"Content-Length": str(size)},
        preload_content=False,
        decode_content=False,
        enforce_content_length=False,  # as botocore asks; it counts the bytes itself
    )
    client = make_s3_client(UNREACHABLE, "us-east-1", "test-key", "test-secret")
    store = S3ObjectStore(client, "satchel", "p")
    with Stubber(client) as stubber:
        stubber.add_response(
            "get_object",
            {"Body": StreamingBody(response, size), "ContentLength": size},
            {"Bucket": "satchel", "Key": "p/docs/k"},
        )
        with store.open("docs/k") as stream:
            assert stream.read(4) == b"head"
            with pytest.raises(StorageUnavailable) as caught:
                stream.read()

    assert caught.value.endpoint == UNREACHABLE
    assert "cannot read 'docs/k'" in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert caught.value.public_message == StorageUnavailable.public_message


def test_a_tls_failure_mid_read_reaches_the_store_unwrapped_by_botocore() -> None:
    """Why the store catches urllib3's errors itself: botocore passes this one through."""
    response = urllib3.HTTPResponse(
        body=BrokenSocketFile(b"", ssl.SSLError(1, "[SSL] decryption failed")),
        preload_content=False,
        decode_content=False,
    )
    with pytest.raises(urllib3.exceptions.SSLError):
        StreamingBody(response, 10).read()


@pytest.fixture(scope="module")
def lock_bucket(s3_client: S3Client) -> str:
    """A bucket with Object Lock. It cannot be emptied (that is the point), so it is
    left behind with the server's throwaway data directory."""
    bucket = f"satchel-lock-{os.urandom(8).hex()}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


@pytest.mark.s3
class TestS3Specifics:
    def test_list_strips_the_prefix_and_prefixes_are_isolated(
        self, s3_client: S3Client, s3_bucket: str, s3_prefix: str, minio_client: Minio
    ) -> None:
        one = S3ObjectStore(s3_client, s3_bucket, s3_prefix + "one")
        two = S3ObjectStore(s3_client, s3_bucket, s3_prefix + "two/")
        one.put("docs/k", io.BytesIO(b"from one"))
        two.put("docs/k", io.BytesIO(b"from two!"))

        assert [(i.key, i.size) for i in one.list()] == [("docs/k", 8)]
        assert [(i.key, i.size) for i in two.list("docs/")] == [("docs/k", 9)]
        assert read_all(one, "docs/k") == b"from one"
        raw = sorted(o.object_name for o in minio_client.list_objects(s3_bucket, s3_prefix, True))
        assert raw == [f"{s3_prefix}one/docs/k", f"{s3_prefix}two/docs/k"]
        assert (
            one.description == f"s3://{s3_bucket}/{s3_prefix}one/ at {s3_client.meta.endpoint_url}"
        )

    def test_the_client_reads_response_timestamps_with_satchels_parser(
        self, s3_client: S3Client, s3_bucket: str, s3_prefix: str
    ) -> None:
        """make_s3_client installs parse_s3_timestamp, whose datetimes carry the standard
        library's UTC, where botocore's default parser gives dateutil's."""
        s3_client.put_object(Bucket=s3_bucket, Key=f"{s3_prefix}stamped", Body=b"x")
        got = s3_client.get_object(Bucket=s3_bucket, Key=f"{s3_prefix}stamped")
        got["Body"].close()
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{s3_prefix}stamped")
        for stamp in (got["LastModified"], listed["Contents"][0]["LastModified"]):
            assert stamp.tzinfo is UTC
            assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5)

    def test_independent_client_reads_exactly_the_bytes_written(
        self, s3_store: S3ObjectStore, s3_bucket: str, s3_prefix: str, minio_client: Minio
    ) -> None:
        data = random.Random(3).randbytes(300_000)
        info = s3_store.put("docs/proof", io.BytesIO(data))

        response = minio_client.get_object(s3_bucket, f"{s3_prefix}docs/proof")
        try:
            raw = response.read()
        finally:
            response.close()
            response.release_conn()
        assert raw == data
        assert minio_client.stat_object(s3_bucket, f"{s3_prefix}docs/proof").etag == info.etag

    def test_reading_more_than_an_object_holds_costs_only_the_object(
        self, s3_store: S3ObjectStore
    ) -> None:
        """decrypt reads a small object in one call sized for the largest it could keep;
        the read must not allocate that size."""
        data = random.Random(5).randbytes(300_000)
        s3_store.put("docs/small", io.BytesIO(data))
        with s3_store.open("docs/small") as stream:
            assert stream.read(10) == data[:10]
            tracemalloc.start()
            try:
                rest = stream.read(64 * MIB)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert stream.read(1) == b""
        assert rest == data[10:]
        assert peak < 3 * len(data)

    def test_failed_multipart_upload_is_aborted(
        self, s3_server: S3Service, s3_bucket: str, s3_prefix: str
    ) -> None:
        client = s3_server.client()
        sent = RecordedOperations(client)
        part_stored = threading.Event()
        client.meta.events.register("after-call.s3.UploadPart", lambda **_: part_stored.set())
        store = S3ObjectStore(client, s3_bucket, s3_prefix)
        # The source fails only once a part is on the server, so there is something
        # to clean up.
        source = ReadOnlyStream(
            BIG, fail_after=12 * MIB, before_failing=lambda: part_stored.wait(timeout=10)
        )

        with pytest.raises(StreamBroke):
            store.put("docs/partial", as_stream(source))

        assert "CreateMultipartUpload" in sent.names
        assert "UploadPart" in sent.names
        assert "AbortMultipartUpload" in sent.names
        assert "CompleteMultipartUpload" not in sent.names
        with pytest.raises(ObjectNotFound):
            store.head("docs/partial")
        pending = client.list_multipart_uploads(Bucket=s3_bucket, Prefix=s3_prefix)
        assert pending.get("Uploads", []) == []

    @pytest.mark.parametrize("operation", ["put", "open", "head", "list", "delete"])
    def test_dead_endpoint_is_unavailable_after_bounded_retries(
        self, s3_server: S3Service, operation: str
    ) -> None:
        endpoint = f"http://127.0.0.1:{free_port()}"
        dead = replace(s3_server, endpoint_url=endpoint)
        client = dead.client(connect_timeout=1, read_timeout=1, max_attempts=2)
        sent = RecordedOperations(client)
        store = S3ObjectStore(client, "satchel", "p", endpoint=endpoint)
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: store.put("docs/k", io.BytesIO(b"x")),
            "open": lambda: store.open("docs/k"),
            "head": lambda: store.head("docs/k"),
            "list": lambda: list(store.list()),
            "delete": lambda: store.delete("docs/k"),
        }
        started = time.monotonic()

        with pytest.raises(StorageUnavailable) as caught:
            calls[operation]()

        assert time.monotonic() - started < 5
        assert endpoint in str(caught.value)
        assert caught.value.endpoint == endpoint
        assert len(sent.names) == 2  # the first try and one retry, then it gives up

    def test_read_only_key_can_read_but_not_write(
        self, s3_server: S3Service, s3_store: S3ObjectStore, s3_bucket: str, s3_prefix: str
    ) -> None:
        s3_store.put("docs/shared", io.BytesIO(b"readable"))
        reader = S3ObjectStore(s3_server.client(read_only=True), s3_bucket, s3_prefix)

        assert read_all(reader, "docs/shared") == b"readable"
        with pytest.raises(StorageError, match="access denied") as caught:
            reader.put("docs/forbidden", io.BytesIO(b"nope"))
        assert not isinstance(caught.value, StorageUnavailable | ObjectNotFound)
        with pytest.raises(ObjectNotFound):
            s3_store.head("docs/forbidden")

    def test_missing_bucket_is_named(self, s3_client: S3Client) -> None:
        store = S3ObjectStore(s3_client, "satchel-no-such-bucket")

        with pytest.raises(StorageError, match="satchel-no-such-bucket") as caught:
            store.put("docs/k", io.BytesIO(b"x"))
        assert not isinstance(caught.value, StorageUnavailable)

    def test_retention_support_is_asked_once(
        self, s3_server: S3Service, s3_bucket: str, lock_bucket: str
    ) -> None:
        client = s3_server.client()
        sent = RecordedOperations(client)
        plain = S3ObjectStore(client, s3_bucket)
        locked = S3ObjectStore(client, lock_bucket)

        answers = [plain.supports_retention(), locked.supports_retention()] * 2

        assert answers == [False, True, False, True]
        assert sent.names == ["GetObjectLockConfiguration"] * 2

    def test_retained_object_cannot_be_destroyed(
        self, s3_client: S3Client, lock_bucket: str, minio_client: Minio
    ) -> None:
        store = S3ObjectStore(s3_client, lock_bucket, "checkpoints")
        retain_until = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)

        store.put("cp-1", io.BytesIO(b"signed checkpoint"), retain_until=retain_until)

        retention = minio_client.get_object_retention(lock_bucket, "checkpoints/cp-1")
        assert retention is not None
        assert retention.mode == "COMPLIANCE"
        assert retention.retain_until_date == retain_until
        version = minio_client.stat_object(lock_bucket, "checkpoints/cp-1").version_id
        with pytest.raises(S3Error):
            minio_client.remove_object(lock_bucket, "checkpoints/cp-1", version_id=version)
        # A plain delete only hides the object behind a delete marker; the retained
        # version is still there.
        store.delete("cp-1")
        response = minio_client.get_object(lock_bucket, "checkpoints/cp-1", version_id=version)
        try:
            assert response.read() == b"signed checkpoint"
        finally:
            response.close()
            response.release_conn()
