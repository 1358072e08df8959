"""The ingestion pipeline on both object stores, proven from outside on S3."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from minio import Minio

from storage.envelope import ObjectIdentity
from storage.errors import (
    ContentRejected,
    IntegrityError,
    ObjectNotFound,
    SpoolUnavailable,
    StorageUnavailable,
    UploadTooLarge,
)
from storage.ingest import (
    SealedRef,
    Spool,
    SpoolFile,
    SpoolWriter,
    StoredFile,
    Vault,
)
from storage.keyring import Keyring
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore
from tests.support import samples
from tests.support.disks import FullDisk, fill_disk, open_files_in

NOW = datetime(2026, 9, 1, tzinfo=UTC)
MARKER = "Permanent record of Avery Quinn-Marlowe, grade 7"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys" / "keyring.json", now=NOW)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    s3: S3ObjectStore = request.getfixturevalue("s3_store")
    return s3


@pytest.fixture
def vault(store: ObjectStore, keyring: Keyring, tmp_path: Path) -> Vault:
    return Vault(
        store, keyring, max_bytes=8 * 1024 * 1024, spool_dir=tmp_path, memory_spool_bytes=64 * 1024
    )


def new_identity() -> tuple[ObjectIdentity, str]:
    identity = ObjectIdentity(document_id=str(uuid.uuid4()), version_id=str(uuid.uuid4()))
    return identity, f"versions/{identity.version_id}"


def read_all(vault: Vault, stored: StoredFile, identity: ObjectIdentity) -> bytes:
    ref = SealedRef(
        stored.object_key, identity, stored.wrapped_dek, stored.key_id, stored.key_version
    )
    return b"".join(vault.open_file(ref))


def stored_keys(store: ObjectStore) -> list[str]:
    return [info.key for info in store.list("")]


@pytest.mark.parametrize(
    ("filename", "make", "mime", "pages"),
    [
        ("report-card.pdf", lambda: samples.make_pdf(pages=4, text=MARKER), "application/pdf", 4),
        ("scan.jpg", samples.make_jpeg, "image/jpeg", 1),
        ("scan.png", samples.make_png, "image/png", 1),
        ("scan.tiff", lambda: samples.make_tiff(pages=3), "image/tiff", 3),
    ],
)
def test_round_trip(vault: Vault, filename: str, make: object, mime: str, pages: int) -> None:
    data = make()  # type: ignore[operator]
    identity, key = new_identity()
    stored = vault.store_file(io.BytesIO(data), filename, identity, key)
    assert (stored.mime_type, stored.page_count, stored.size) == (mime, pages, len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.filename == filename
    assert vault.store.head(key).size == stored.stored_size > stored.size
    assert read_all(vault, stored, identity) == data


def test_a_large_scan_spills_to_an_encrypted_spool(vault: Vault) -> None:
    data = samples.make_pdf(pages=2, text=MARKER)
    big = samples.make_tiff(pages=40, width=256, height=256)
    assert len(big) > 64 * 1024
    identity, key = new_identity()
    stored = vault.store_file(io.BytesIO(big), "big.tif", identity, key)
    assert read_all(vault, stored, identity) == big
    assert data  # the small one goes through memory only
    identity2, key2 = new_identity()
    assert (
        read_all(vault, vault.store_file(io.BytesIO(data), "a.pdf", identity2, key2), identity2)
        == data
    )


def test_a_spool_is_stored_as_it_is(vault: Vault) -> None:
    data = samples.make_tiff(pages=30, width=256, height=256)  # spills: over 64 KiB
    with vault.spool(io.BytesIO(data)) as spool:
        assert (spool.size, spool.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        identity, key = new_identity()
        stored = vault.store_file(spool, "scan.tif", identity, key)
        # The spool is not used up: the same bytes can be stored again.
        identity2, key2 = new_identity()
        again = vault.store_file(spool, "scan.tif", identity2, key2)
    assert stored.sha256 == again.sha256 == spool.sha256
    assert read_all(vault, stored, identity) == read_all(vault, again, identity2) == data


@pytest.mark.parametrize("refused", [False, True])
def test_a_large_upload_held_in_memory_is_hashed_beside_the_upload(
    store: ObjectStore, keyring: Keyring, tmp_path: Path, refused: bool
) -> None:
    vault = Vault(store, keyring, max_bytes=8 * 1024 * 1024, spool_dir=tmp_path)
    data = samples.make_tiff(pages=8, width=512, height=512)
    assert len(data) > 1024 * 1024  # past the size worth a thread, within the memory spool
    if refused:
        data += b"appended after the image"
    identity, key = new_identity()
    with vault.spool(io.BytesIO(data)) as spool:
        assert not spool.sha256_known
        if refused:
            with pytest.raises(ContentRejected):
                vault.store_file(spool, "scan.tif", identity, key)
            assert stored_keys(vault.store) == []
            return
        stored = vault.store_file(spool, "scan.tif", identity, key)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(vault, stored, identity) == data


def test_a_closed_spool_that_was_never_hashed_cannot_be(tmp_path: Path) -> None:
    spool = Spool(io.BytesIO(b"x" * 1000), memory_limit=4096, directory=tmp_path)
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        _ = spool.sha256


def test_a_spool_over_the_size_limit_is_refused(vault: Vault, keyring: Keyring) -> None:
    generous = Vault(vault.store, keyring, max_bytes=vault.max_bytes * 2)
    with generous.spool(io.BytesIO(b"%" * (vault.max_bytes + 1))) as spool:
        identity, key = new_identity()
        with pytest.raises(UploadTooLarge):
            vault.store_file(spool, "big.pdf", identity, key)
    assert stored_keys(vault.store) == []


@pytest.mark.parametrize(
    ("filename", "make", "reason"),
    [
        ("empty.pdf", lambda: b"", "empty"),
        ("js.pdf", samples.pdf_with_open_action_javascript, "pdf_javascript"),
        ("locked.pdf", samples.encrypted_pdf, "pdf_encrypted"),
        ("page.pdf", samples.html_document, "unsupported_type"),
        ("photo.png", samples.make_jpeg, "extension_mismatch"),
        ("cut.pdf", samples.truncated_pdf, "pdf_unreadable"),
        ("evil\u202efdp.pdf", samples.make_pdf, "bad_filename"),
    ],
)
def test_rejected_files_leave_nothing_stored(
    vault: Vault, filename: str, make: object, reason: str
) -> None:
    identity, key = new_identity()
    with pytest.raises(ContentRejected) as raised:
        vault.store_file(io.BytesIO(make()), filename, identity, key)  # type: ignore[operator]
    assert raised.value.reason == reason
    assert stored_keys(vault.store) == []


class CountingStream(io.RawIOBase):
    """An endless upload that counts how much of it was read."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        buffer[:] = b"%" * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


def test_oversized_upload_is_refused_while_streaming(vault: Vault) -> None:
    source = CountingStream()
    identity, key = new_identity()
    with pytest.raises(UploadTooLarge):
        vault.store_file(source, "huge.pdf", identity, key)  # type: ignore[arg-type]
    assert source.read_bytes <= vault.max_bytes + 1024 * 1024
    assert stored_keys(vault.store) == []


class FailingReader(io.RawIOBase):
    def __init__(self, inner: io.RawIOBase, fail_after: int) -> None:
        self.inner, self.left = inner, fail_after

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self.left <= 0:
            raise OSError("connection reset while uploading")
        data = self.inner.read(min(size, self.left) if size >= 0 else self.left)
        self.left -= len(data or b"")
        return data or b""


def test_a_failure_during_put_leaves_no_object(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encrypted stream breaks halfway through the upload to the store."""
    import storage.ingest as ingest

    real = ingest.EncryptingReader

    def breaking(*args: object, **kwargs: object) -> FailingReader:
        return FailingReader(real(*args, **kwargs), fail_after=200 * 1024)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "EncryptingReader", breaking)
    data = samples.make_tiff(pages=30, width=256, height=256)
    identity, key = new_identity()
    with pytest.raises(Exception, match="connection reset"):
        vault.store_file(io.BytesIO(data), "scan.tif", identity, key)
    with pytest.raises(ObjectNotFound):
        vault.store.head(key)
    assert stored_keys(vault.store) == []


def test_wrong_identity_or_tampering_is_an_integrity_error(vault: Vault) -> None:
    data = samples.make_pdf(pages=2)
    identity, key = new_identity()
    stored = vault.store_file(io.BytesIO(data), "a.pdf", identity, key)
    other = ObjectIdentity(document_id=identity.document_id, version_id=str(uuid.uuid4()))
    with pytest.raises(IntegrityError):
        read_all(vault, stored, other)
    with vault.store.open(key) as fh:
        raw = bytearray(fh.read())
    raw[-5] ^= 0x01
    vault.store.put(key, io.BytesIO(bytes(raw)), len(raw))
    with pytest.raises(IntegrityError):
        read_all(vault, stored, identity)


@pytest.mark.s3
def test_the_raw_bucket_holds_ciphertext_only(
    s3_store: S3ObjectStore,
    keyring: Keyring,
    minio_client: Minio,
    s3_bucket: str,
    s3_prefix: str,
    tmp_path: Path,
) -> None:
    """An independent client reads what is really stored: no plaintext anywhere."""
    vault = Vault(s3_store, keyring, max_bytes=8 * 1024 * 1024, spool_dir=tmp_path)
    uploads = {
        "record.pdf": samples.make_pdf(pages=3, text=MARKER),
        "scan.png": samples.make_png(),
        "scan.tif": samples.make_tiff(pages=2),
    }
    for name, data in uploads.items():
        identity, key = new_identity()
        vault.store_file(io.BytesIO(data), name, identity, key)
    objects = list(minio_client.list_objects(s3_bucket, prefix=s3_prefix, recursive=True))
    assert len(objects) == len(uploads)
    for item in objects:
        response = minio_client.get_object(s3_bucket, item.object_name)
        try:
            raw = response.read()
        finally:
            response.close()
            response.release_conn()
        assert raw.startswith(b"STCH")
        assert b"%PDF-" not in raw and b"\x89PNG" not in raw and b"II*\x00" not in raw
        assert MARKER.encode() not in raw and b"Avery" not in raw
        for data in uploads.values():
            assert data[64:128] not in raw


class Pieces:
    """``data`` handed out in pieces of at most ``piece`` bytes, however much is asked."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.source, self.piece = io.BytesIO(data), piece

    def read(self, size: int = -1) -> bytes:
        return self.source.read(self.piece if size < 0 else min(size, self.piece))


@pytest.mark.parametrize("memory_limit", [1000, 10_000_000])
def test_spool_reads_back_exactly_at_any_offset(tmp_path: Path, memory_limit: int) -> None:
    payload = os.urandom(300_000)
    # Odd pieces, so that neither the spill nor the writes line up with AES blocks.
    spool = Spool(Pieces(payload, 7001), memory_limit=memory_limit, directory=tmp_path)
    assert spool.size == len(payload)
    assert spool.sha256 == hashlib.sha256(payload).hexdigest()
    first, second = spool.open(), spool.open()
    for offset in (0, 1, 15, 16, 17, 999, 1000, 123_457, len(payload) - 3):
        first.seek(offset)
        second.seek(len(payload) - offset)
        assert first.read(5000) == payload[offset : offset + 5000]
        assert second.read() == payload[len(payload) - offset :]
    first.seek(0)
    assert first.read() == payload
    spool.close()
    assert list(tmp_path.iterdir()) == []  # the spill file was never linked in the directory
    with pytest.raises(ValueError):
        spool.open()
    if memory_limit < len(payload):  # a view of the closed spill file reads nothing more
        first.seek(0)
        with pytest.raises(ValueError):
            first.read(1)


def test_a_document_that_arrives_in_one_piece_is_spooled_without_a_copy(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)  # larger than the pieces a spilled spool reads
    # A BytesIO hands out all of its bytes, from the start, as the very same object.
    with Spool(io.BytesIO(data), memory_limit=8 * 1024 * 1024, directory=tmp_path) as spool:
        assert spool.open().read() is data
        assert spool.sha256 == hashlib.sha256(data).hexdigest()


class Recorded:
    """``data`` as a source that records how much each read asks for."""

    def __init__(self, data: bytes) -> None:
        self.source, self.asked = io.BytesIO(data), list[int]()

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return self.source.read(size)


def test_a_spool_asks_for_the_size_it_expects(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    source = Recorded(data)
    with Spool(source, memory_limit=1_000_000, directory=tmp_path, size_hint=len(data)):
        pass
    # All of it at once, then one byte more to find the end.
    assert source.asked == [len(data) + 1, 1]
    # A hint is only a hint: a larger source is read on, a megabyte at a time.
    source = Recorded(data)
    with Spool(source, memory_limit=1_000_000, directory=tmp_path, size_hint=1000) as spool:
        assert spool.open().read() == data
    assert source.asked == [1001, 1024 * 1024, 1024 * 1024]


def test_spool_views_cannot_change_the_spool(tmp_path: Path) -> None:
    with Spool(io.BytesIO(b"original"), memory_limit=1000, directory=tmp_path) as spool:
        view = spool.open()
        view.write(b"CHANGED!")
        assert spool.open().read() == b"original"


def test_spool_file_on_disk_is_not_plaintext(tmp_path: Path) -> None:
    spool = Spool(io.BytesIO(MARKER.encode() * 100), memory_limit=10, directory=tmp_path)
    assert spool._file is not None
    assert MARKER.encode() not in os.pread(spool._file.fileno(), 100_000, 0)
    assert spool.open().read() == MARKER.encode() * 100
    spool.close()


def test_a_failing_source_leaves_no_spool_file(tmp_path: Path) -> None:
    source = FailingReader(io.BytesIO(MARKER.encode() * 100), fail_after=2000)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="connection reset"):
        Spool(source, memory_limit=10, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


class PatternStream(io.RawIOBase):
    """``size`` bytes of a PDF-free pattern, generated on the fly (nothing held)."""

    def __init__(self, prefix: bytes, size: int) -> None:
        self.prefix, self.size, self.sent = prefix, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.size - self.sent)
        if count <= 0:
            return 0
        chunk = bytearray(count)
        if self.sent < len(self.prefix):
            head = self.prefix[self.sent : self.sent + count]
            chunk[: len(head)] = head
        buffer[:count] = chunk
        self.sent += count
        return count


def _tiff_header_for(size: int) -> bytes:
    """A one-page TIFF whose single strip is the rest of the file (zeros)."""
    import struct

    entries = [
        (256, 4, 1, 1024),
        (257, 4, 1, (size - 256) // 1024),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 256),
        (277, 3, 1, 1),
        (279, 4, 1, size - 256),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
        )
        + struct.pack("<I", 0)
    )
    header = b"II*\x00" + struct.pack("<I", 8) + ifd
    return header + bytes(256 - len(header))


@pytest.mark.slow
def test_100_mb_round_trip_grows_memory_by_less_than_64_mb(
    keyring: Keyring, tmp_path: Path
) -> None:
    size = 100 * 1024 * 1024
    store = LocalObjectStore(tmp_path / "objects")
    vault = Vault(store, keyring, max_bytes=size + 1, spool_dir=tmp_path)
    identity, key = new_identity()
    tracemalloc.start()
    try:
        stored = vault.store_file(
            PatternStream(_tiff_header_for(size), size),  # type: ignore[arg-type]
            "scan.tif",
            identity,
            key,
        )
        digest = hashlib.sha256()
        total = 0
        chunks: Iterator[bytes] = vault.open_file(
            SealedRef(key, identity, stored.wrapped_dek, stored.key_id, stored.key_version)
        )
        for chunk in chunks:
            digest.update(chunk)
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size == stored.size
    assert digest.hexdigest() == stored.sha256
    assert peak < 64 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"


# --- the spool directory failing, and spools filled by a parser that pushes -------------


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ("missing", "No such file or directory (ENOENT)"),
        ("a file", "Not a directory (ENOTDIR)"),
        ("full", "No space left on device (ENOSPC)"),
    ],
)
def test_a_failing_spool_directory_is_storage_unavailable_naming_it(
    store: ObjectStore,
    keyring: Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
    reason: str,
) -> None:
    spool_dir = tmp_path / "spool"
    if broken == "a file":
        spool_dir.write_bytes(b"")
    elif broken == "full":
        spool_dir.mkdir()
        disks = fill_disk(monkeypatch, room=100 * 1024)
    vault = Vault(
        store, keyring, max_bytes=8 * 1024 * 1024, spool_dir=spool_dir, memory_spool_bytes=1024
    )
    data = samples.make_tiff(pages=40, width=256, height=256)
    identity, key = new_identity()
    with pytest.raises(SpoolUnavailable) as raised:
        vault.store_file(io.BytesIO(data), "scan.tif", identity, key)
    error = raised.value
    assert isinstance(error, StorageUnavailable)
    assert str(spool_dir) in str(error) and reason in str(error)
    assert error.directory == spool_dir
    # The page may say why, not where.
    assert os.strerror(error.errno or 0) in error.public_message
    assert str(spool_dir) not in error.public_message
    assert stored_keys(vault.store) == []
    if broken == "full":
        assert [d.file.closed for d in disks] == [True]  # the spill file is gone
        assert "cannot write to its spill file" in str(error)
    else:
        assert "cannot create a spill file" in str(error)


def test_a_short_write_to_the_spill_file_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Trickle(FullDisk):
        def write(self, data: bytes) -> int:
            return super().write(data[:1000])  # never more than 1000 bytes at once

    made = fill_disk(monkeypatch, room=10**9, kind=Trickle)
    data = os.urandom(300_000)
    with Spool(io.BytesIO(data), memory_limit=10, directory=tmp_path) as spool:
        assert spool.open().read() == data
        assert spool.sha256 == hashlib.sha256(data).hexdigest()
    assert len(made) == 1


def test_a_spool_writer_fills_a_spool_pushed_in_pieces(tmp_path: Path) -> None:
    data = os.urandom(700_000)
    writer = SpoolWriter(memory_limit=100_000, directory=tmp_path, max_bytes=len(data))
    for start in range(0, len(data), 64 * 1024):
        writer.write(memoryview(data)[start : start + 64 * 1024])
    assert not writer.in_memory and writer.size == len(data)
    [on_disk] = open_files_in(tmp_path)
    assert len(on_disk) == len(data) and data[:4096] not in on_disk  # encrypted
    with writer.seal() as spool:
        assert not spool.in_memory
        assert spool.open().read() == data
        assert spool.sha256 == hashlib.sha256(data).hexdigest()
    assert open_files_in(tmp_path) == []
    with pytest.raises(ValueError, match="sealed or discarded"):
        writer.write(b"more")
    small = SpoolWriter(memory_limit=100_000, directory=tmp_path)
    small.write(b"in memory")
    with small.seal() as spool:
        assert spool.in_memory and spool.open().read() == b"in memory"


def test_a_spool_writer_keeps_nothing_past_the_size_limit(tmp_path: Path) -> None:
    writer = SpoolWriter(memory_limit=1000, directory=tmp_path, max_bytes=5000)
    writer.write(b"x" * 4000)
    assert len(open_files_in(tmp_path)) == 1
    with pytest.raises(UploadTooLarge):
        writer.write(b"x" * 1001)
    assert open_files_in(tmp_path) == []
    with pytest.raises(ValueError, match="sealed or discarded"):
        writer.seal()


def test_a_spool_file_is_written_rewound_read_and_handed_over(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    file = SpoolFile(SpoolWriter(memory_limit=1000, directory=tmp_path, max_bytes=10**6))
    for start in range(0, len(data), 64 * 1024):
        file.write(data[start : start + 64 * 1024])
    assert file.tell() == len(data) and file.memory_bytes == 0  # spilled
    file.seek(0)
    assert file.read(10) == data[:10]
    assert file.read() == data[10:]
    spool = file.spool()
    assert spool.open().read() == data and file.spool() is spool
    with pytest.raises(ValueError):
        file.write(b"after the rewind")
    file.close()
    assert open_files_in(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        spool.open()


@pytest.mark.parametrize("failure", ["too large", "spool directory missing"])
def test_a_spool_file_keeps_a_writing_error_for_whoever_takes_the_spool(
    tmp_path: Path, failure: str
) -> None:
    """The parser writes the whole part and rewinds it without an error; taking the
    spool (or reading) raises it, so the error belongs to this file alone."""
    directory = tmp_path / "missing" if failure != "too large" else tmp_path
    writer = SpoolWriter(memory_limit=1000, directory=directory, max_bytes=5000)
    file = SpoolFile(writer)
    for _ in range(10):
        assert file.write(b"y" * 1000) == 1000
    assert file.seek(0) == 0 and file.memory_bytes == 0
    assert open_files_in(tmp_path) == []
    expected = UploadTooLarge if failure == "too large" else SpoolUnavailable
    with pytest.raises(expected):
        file.spool()
    with pytest.raises(expected):
        file.read()
    file.close()
