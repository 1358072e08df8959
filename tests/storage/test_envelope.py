"""The encrypted object format: vectors, round trips, tamper detection, two passes, memory."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.envelope import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    EncryptingReader,
    ObjectIdentity,
    decrypt,
    read_header,
    sealed_size,
)
from storage.errors import IntegrityError
from tests.storage import make_vectors

VECTORS = Path(__file__).parent / "vectors"
IDENTITY = ObjectIdentity(document_id="doc-1", version_id="ver-1")
DEK = bytes(range(32))


def load_vectors(name: str) -> list[dict[str, Any]]:
    document = json.loads((VECTORS / name).read_text())
    assert document["format_version"] == FORMAT_VERSION
    vectors: list[dict[str, Any]] = document["vectors"]
    return vectors


POSITIVE = load_vectors("positive.json")
NEGATIVE = load_vectors("negative.json")


def seal(
    plaintext: bytes,
    dek: bytes = DEK,
    identity: ObjectIdentity = IDENTITY,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    read_size: int = -1,
) -> bytes:
    reader = EncryptingReader(
        io.BytesIO(plaintext), dek, identity, "kek", 1, segment_size=segment_size
    )
    if read_size < 0:
        return reader.read()
    return b"".join(iter(lambda: reader.read(read_size), b""))


def opener(sealed: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(sealed)


def collect(chunks: Iterator[bytes], into: list[bytes]) -> None:
    """Consume ``chunks`` into ``into``, so a test can see what came out before an error."""
    for chunk in chunks:
        into.append(chunk)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with one output block, written independently of the code under test."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


# --- committed vectors --------------------------------------------------------------------


def test_committed_vectors_are_what_the_generator_builds() -> None:
    for name, content in make_vectors.build().items():
        assert (VECTORS / name).read_bytes() == content, f"regenerate {name}"


def test_negative_vectors_cover_every_required_case() -> None:
    names = {vector["name"] for vector in NEGATIVE}
    assert len(names) == len(NEGATIVE) >= 20
    required = {
        "header_magic",
        "header_format_version_future",
        "header_algorithm",
        "header_key_id",
        "header_key_version",
        "header_salt",
        "header_segment_size",
        "header_nonce_prefix",
        "header_commitment",
        "bitflip_segment_0",
        "bitflip_segment_1",
        "bitflip_segment_2",
        "truncated_segment_boundary",
        "truncated_mid_segment",
        "truncated_header_only",
        "extended_authentic_segment",
        "extended_trailing_garbage",
        "segments_swapped",
        "segments_reordered",
        "last_segment_flag_dropped",
        "wrong_identity_document_id",
        "wrong_identity_version_id",
        "wrong_key",
        "empty_plaintext_bitflip",
    }
    assert required <= names


@pytest.mark.parametrize("limit", [8 * 1024 * 1024, 0], ids=["in_memory", "two_pass"])
@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vector_decrypts(vector: dict[str, Any], limit: int) -> None:
    identity = ObjectIdentity(vector["document_id"], vector["version_id"])
    sealed = bytes.fromhex(vector["sealed"])
    plaintext = b"".join(
        decrypt(opener(sealed), bytes.fromhex(vector["dek"]), identity, in_memory_limit=limit)
    )
    assert plaintext == bytes.fromhex(vector["plaintext"])
    assert hashlib.sha256(plaintext).hexdigest() == vector["plaintext_sha256"]
    assert len(sealed) == sealed_size(len(plaintext), vector["segment_size"])


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vector_reencrypts_byte_for_byte(vector: dict[str, Any]) -> None:
    randomness = io.BytesIO(bytes.fromhex(vector["salt"] + vector["nonce_prefix"]))
    reader = EncryptingReader(
        io.BytesIO(bytes.fromhex(vector["plaintext"])),
        bytes.fromhex(vector["dek"]),
        ObjectIdentity(vector["document_id"], vector["version_id"]),
        vector["key_id"],
        vector["key_version"],
        segment_size=vector["segment_size"],
        random=randomness.read,
    )
    assert reader.read().hex() == vector["sealed"]
    assert reader.plaintext_sha256 == vector["plaintext_sha256"]
    assert reader.plaintext_size == len(vector["plaintext"]) // 2


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vector_header_matches_the_documented_layout(vector: dict[str, Any]) -> None:
    sealed = bytes.fromhex(vector["sealed"])
    dek, salt = bytes.fromhex(vector["dek"]), bytes.fromhex(vector["salt"])
    identity = ObjectIdentity(vector["document_id"], vector["version_id"])
    info = b"satchel.object.key-commitment\x00\x01" + identity.encode()
    expected = (
        b"STCH"
        + bytes([1, 1, 3])
        + b"kek".ljust(32, b"\x00")
        + struct.pack(">I", vector["key_version"])
        + salt
        + struct.pack(">I", vector["segment_size"])
        + bytes.fromhex(vector["nonce_prefix"])
        + hkdf_sha256(dek, salt, info)
    )
    assert sealed[:HEADER_SIZE] == expected
    header = read_header(io.BytesIO(sealed))
    assert (header.key_id, header.key_version, header.segment_size) == ("kek", 1, 64)
    assert header.encode() == expected


def test_identity_encoding_is_length_prefixed() -> None:
    assert ObjectIdentity("ab", "c").encode() == b"\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    assert ObjectIdentity("a", "bc").encode() != ObjectIdentity("ab", "c").encode()
    with pytest.raises(ValueError):
        ObjectIdentity("", "v")


@pytest.mark.parametrize("limit", [8 * 1024 * 1024, 0], ids=["in_memory", "two_pass"])
@pytest.mark.parametrize("vector", NEGATIVE, ids=[v["name"] for v in NEGATIVE])
def test_negative_vector_is_rejected_without_plaintext(vector: dict[str, Any], limit: int) -> None:
    identity = ObjectIdentity(vector["document_id"], vector["version_id"])
    released: list[bytes] = []
    with pytest.raises(IntegrityError) as caught:
        chunks = decrypt(
            opener(bytes.fromhex(vector["sealed"])),
            bytes.fromhex(vector["dek"]),
            identity,
            in_memory_limit=limit,
        )
        collect(chunks, released)
    assert type(caught.value) is IntegrityError
    assert released == []


# --- properties -----------------------------------------------------------------------------

SEGMENT_SIZES = st.sampled_from([16, 17, 64, 100])


@st.composite
def sizes_and_segments(draw: st.DrawFn) -> tuple[int, int]:
    segment = draw(SEGMENT_SIZES)
    near_boundary = st.builds(
        lambda k, delta: max(0, k * segment + delta),
        st.integers(0, 5),
        st.integers(-1, 1),
    )
    size = draw(st.one_of(near_boundary, st.integers(0, 20 * segment)))
    return size, segment


@settings(max_examples=150, deadline=None)
@given(
    case=sizes_and_segments(),
    chunkings=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    seed=st.binary(min_size=1, max_size=8),
    limit=st.sampled_from([0, 1 << 20]),
)
def test_round_trip_with_any_read_sizes(
    case: tuple[int, int], chunkings: list[int], seed: bytes, limit: int
) -> None:
    size, segment = case
    plaintext = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    reader = EncryptingReader(io.BytesIO(plaintext), DEK, IDENTITY, "kek", 1, segment_size=segment)
    with pytest.raises(RuntimeError):
        _ = reader.plaintext_size
    pieces = []
    turn = 0
    while piece := reader.read(chunkings[turn % len(chunkings)]):
        assert len(piece) <= chunkings[turn % len(chunkings)]
        pieces.append(piece)
        turn += 1
    sealed = b"".join(pieces)
    assert len(sealed) == sealed_size(size, segment)
    assert reader.plaintext_size == size
    assert reader.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest()
    assert b"".join(decrypt(opener(sealed), DEK, IDENTITY, in_memory_limit=limit)) == plaintext


@st.composite
def sealed_and_position(draw: st.DrawFn) -> tuple[bytes, int]:
    size = draw(st.integers(0, 200))
    sealed = seal(bytes([size % 251]) * size, segment_size=32)
    return sealed, draw(st.integers(0, len(sealed) - 1))


@settings(max_examples=300, deadline=None)
@given(case=sealed_and_position(), mask=st.integers(1, 255), limit=st.sampled_from([0, 1 << 20]))
def test_any_single_byte_change_is_rejected(case: tuple[bytes, int], mask: int, limit: int) -> None:
    sealed, position = case
    tampered = sealed[:position] + bytes([sealed[position] ^ mask]) + sealed[position + 1 :]
    released: list[bytes] = []
    with pytest.raises(IntegrityError):
        collect(decrypt(opener(tampered), DEK, IDENTITY, in_memory_limit=limit), released)
    assert released == []


@settings(max_examples=100, deadline=None)
@given(case=sealed_and_position(), inserted=st.binary(min_size=0, max_size=1))
def test_any_single_byte_deletion_or_insertion_is_rejected(
    case: tuple[bytes, int], inserted: bytes
) -> None:
    sealed, position = case
    # An empty ``inserted`` deletes the byte at ``position``; one byte is inserted before it.
    changed = (
        sealed[:position] + sealed[position + 1 :]
        if not inserted
        else sealed[:position] + inserted + sealed[position:]
    )
    with pytest.raises(IntegrityError):
        b"".join(decrypt(opener(changed), DEK, IDENTITY))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=HEADER_SIZE + 4))
def test_read_header_accepts_or_raises_integrity_error_only(data: bytes) -> None:
    try:
        header = read_header(io.BytesIO(data))
    except IntegrityError:
        return
    assert header.encode() == data[:HEADER_SIZE]


# --- contract details -------------------------------------------------------------------------


def test_reader_is_a_non_seekable_binary_stream() -> None:
    reader = EncryptingReader(io.BytesIO(b"abc"), DEK, IDENTITY, "kek", 7)
    assert reader.readable()
    assert not reader.seekable()
    assert reader.header.key_version == 7
    assert reader.read(4) == b"STCH"
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_reader_does_not_close_the_plaintext() -> None:
    source = io.BytesIO(b"abc")
    with EncryptingReader(source, DEK, IDENTITY, "kek", 1) as reader:
        reader.read()
    assert not source.closed


def test_plaintext_hash_is_ready_once_the_plaintext_is_exhausted() -> None:
    reader = EncryptingReader(io.BytesIO(b"x" * 40), DEK, IDENTITY, "kek", 1, segment_size=16)
    with pytest.raises(RuntimeError, match="read to its end"):
        _ = reader.plaintext_sha256
    reader.read()
    assert reader.plaintext_size == 40
    assert reader.plaintext_sha256 == hashlib.sha256(b"x" * 40).hexdigest()


def test_a_reader_that_does_not_hash_seals_the_same_bytes() -> None:
    plaintext = os.urandom(200_000)
    hashing = EncryptingReader(io.BytesIO(plaintext), DEK, IDENTITY, "kek", 1, random=bytes)
    plain = EncryptingReader(
        io.BytesIO(plaintext), DEK, IDENTITY, "kek", 1, random=bytes, hash_plaintext=False
    )
    assert plain.read() == hashing.read()
    assert plain.plaintext_size == hashing.plaintext_size == len(plaintext)
    with pytest.raises(RuntimeError, match="hash_plaintext"):
        _ = plain.plaintext_sha256


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dek": b"short"}, "32 bytes"),
        ({"key_id": "no spaces"}, "key id"),
        ({"key_id": "k" * 33}, "key id"),
        ({"key_version": 0}, "key_version"),
        ({"segment_size": 8}, "segment_size"),
    ],
)
def test_reader_refuses_invalid_parameters(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"dek": DEK, "key_id": "kek", "key_version": 1} | kwargs
    segment_size = arguments.pop("segment_size", DEFAULT_SEGMENT_SIZE)
    with pytest.raises(ValueError, match=message):
        EncryptingReader(io.BytesIO(b""), identity=IDENTITY, segment_size=segment_size, **arguments)


def test_every_object_gets_a_fresh_salt_and_nonce_prefix() -> None:
    first, second = seal(b"same"), seal(b"same")
    assert first != second
    assert read_header(io.BytesIO(first)).salt != read_header(io.BytesIO(second)).salt


def test_sealed_object_is_exactly_header_and_segments() -> None:
    # Every byte of the object is accounted for by the header and the segment records, so
    # there is no room for a wrapped data key in it.
    for size in (0, 1, 65536, 65537, 200_000):
        assert len(seal(b"\x00" * size)) == sealed_size(size)
    assert sealed_size(0) == HEADER_SIZE + 16
    with pytest.raises(ValueError):
        sealed_size(-1)


def test_decrypt_closes_every_stream_it_opens() -> None:
    sealed = seal(b"y" * 100, segment_size=16)
    opened: list[io.BytesIO] = []

    def open_ciphertext() -> BinaryIO:
        opened.append(io.BytesIO(sealed))
        return opened[-1]

    assert b"".join(decrypt(open_ciphertext, DEK, IDENTITY, in_memory_limit=10)) == b"y" * 100
    assert len(opened) == 2
    assert all(stream.closed for stream in opened)


# --- large objects: verify first, then decrypt ---------------------------------------------------

LARGE = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def large_object() -> tuple[bytes, bytes]:
    plaintext = os.urandom(LARGE)
    return plaintext, seal(plaintext)


class CountingOpener:
    """Serves ``versions`` of an object, one per call (the last one repeats)."""

    def __init__(self, *versions: bytes) -> None:
        self.versions = versions
        self.calls = 0

    def __call__(self) -> BinaryIO:
        self.calls += 1
        return io.BytesIO(self.versions[min(self.calls, len(self.versions)) - 1])


class ReadCounting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.reads.append(len(chunk))
        return chunk


@pytest.mark.parametrize("size", [0, 1, DEFAULT_SEGMENT_SIZE, 3 * 1024 * 1024 + 5])
def test_an_object_that_fits_in_memory_is_read_in_one_call_after_its_header(size: int) -> None:
    plaintext = os.urandom(size)
    sealed = seal(plaintext)
    streams: list[ReadCounting] = []

    def open_ciphertext() -> BinaryIO:
        streams.append(ReadCounting(sealed))
        return streams[-1]

    assert b"".join(decrypt(open_ciphertext, DEK, IDENTITY, in_memory_limit=size)) == plaintext
    # One stream; the reads that returned data: the header, then all the rest at once.
    assert [[n for n in stream.reads if n] for stream in streams] == [
        [HEADER_SIZE, len(sealed) - HEADER_SIZE]
    ]


def test_an_object_one_byte_too_large_to_keep_is_read_twice() -> None:
    plaintext = os.urandom(3 * DEFAULT_SEGMENT_SIZE + 1)
    opener_ = CountingOpener(seal(plaintext))
    chunks = decrypt(opener_, DEK, IDENTITY, in_memory_limit=len(plaintext) - 1)
    assert b"".join(chunks) == plaintext
    assert opener_.calls == 2


def test_large_object_is_verified_in_a_first_pass(large_object: tuple[bytes, bytes]) -> None:
    _, sealed = large_object
    corrupted = sealed[:-1] + bytes([sealed[-1] ^ 1])  # the last segment's tag
    opener_ = CountingOpener(corrupted)
    with pytest.raises(IntegrityError):
        decrypt(opener_, DEK, IDENTITY, in_memory_limit=1024 * 1024)
    assert opener_.calls == 1  # nothing was decrypted for output


def test_large_object_is_decrypted_in_a_second_pass(large_object: tuple[bytes, bytes]) -> None:
    plaintext, sealed = large_object
    opener_ = CountingOpener(sealed)
    chunks = decrypt(opener_, DEK, IDENTITY, in_memory_limit=1024 * 1024)
    assert opener_.calls == 1
    digest = hashlib.sha256()
    for chunk in chunks:
        assert len(chunk) <= DEFAULT_SEGMENT_SIZE
        digest.update(chunk)
    assert opener_.calls == 2
    assert digest.digest() == hashlib.sha256(plaintext).digest()


def test_object_swapped_between_passes_is_detected(large_object: tuple[bytes, bytes]) -> None:
    _, sealed = large_object
    other = seal(b"\x00" * LARGE)
    chunks = decrypt(CountingOpener(sealed, other), DEK, IDENTITY, in_memory_limit=1024 * 1024)
    with pytest.raises(IntegrityError, match="between"):
        next(chunks)


def test_object_truncated_between_passes_fails_at_the_end(
    large_object: tuple[bytes, bytes],
) -> None:
    _, sealed = large_object
    truncated = sealed[: HEADER_SIZE + 3 * (DEFAULT_SEGMENT_SIZE + 16)]
    chunks = decrypt(CountingOpener(sealed, truncated), DEK, IDENTITY, in_memory_limit=1024)
    released: list[bytes] = []
    with pytest.raises(IntegrityError):
        collect(chunks, released)
    # Only authenticated segments came out, and the stream still ended in an error.
    assert len(released) == 2


# --- bounded memory ----------------------------------------------------------------------------


class PatternStream(io.RawIOBase):
    """``size`` deterministic bytes generated on the fly (never held in memory)."""

    def __init__(self, size: int, block: bytes) -> None:
        self.remaining = size
        self.block = block
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self.remaining, len(self.block) - self.offset)
        view[:count] = self.block[self.offset : self.offset + count]
        self.offset = (self.offset + count) % len(self.block)
        self.remaining -= count
        return count


def test_64_mib_round_trip_in_bounded_memory() -> None:
    size = 64 * 1024 * 1024
    # An odd block length, so that no two segments of the pattern are alike.
    block = b"".join(hashlib.sha256(struct.pack(">I", i)).digest() for i in range(2049))[:65_519]
    expected = hashlib.sha256()
    for chunk in iter(PatternStream(size, block).read, b""):
        expected.update(chunk)

    def open_ciphertext() -> BinaryIO:
        # The same object each time: same plaintext, same salt and nonce prefix.
        return EncryptingReader(
            io.BufferedReader(PatternStream(size, block)),
            DEK,
            IDENTITY,
            "kek",
            1,
            random=lambda n: b"\x07" * n,
        )

    limit = 1024 * 1024
    tracemalloc.start()
    try:
        digest = hashlib.sha256()
        received = 0
        for chunk in decrypt(open_ciphertext, DEK, IDENTITY, in_memory_limit=limit):
            digest.update(chunk)
            received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert digest.digest() == expected.digest()
    # The in-memory limit plus a few segments, for an object 64 times larger.
    assert peak < limit + 2 * 1024 * 1024, f"peak traced memory {peak} bytes"
