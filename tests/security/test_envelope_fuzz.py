"""Fuzzing the encrypted object format's parser: whatever bytes an object store returns,
``read_header`` and ``decrypt`` answer with :class:`IntegrityError` and nothing else, and
release no plaintext unless the object is exactly one that was sealed.

``tests/storage/test_envelope.py`` covers single-byte edits of real objects and headers
read from a whole buffer; this file adds arbitrary objects, headers that pass the key
commitment followed by arbitrary segments, several edits at once, and short reads.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage.envelope import (
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    TAG_SIZE,
    EncryptingReader,
    Header,
    ObjectIdentity,
    decrypt,
    read_header,
)
from storage.errors import IntegrityError

IDENTITY = ObjectIdentity(document_id="document-1", version_id="version-1")
DEK = bytes(range(100, 132))
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Both ways of reading: all in memory, and a verifying pass followed by a decrypting pass.
LIMITS = st.sampled_from([0, 1 << 20])


def seal(plaintext: bytes, segment_size: int) -> bytes:
    reader = EncryptingReader(
        io.BytesIO(plaintext), DEK, IDENTITY, "kek-1", 3, segment_size=segment_size
    )
    return reader.read()


class ShortReads(io.RawIOBase):
    """A stream that hands out ``data`` in the given (cycled) read sizes, like a socket."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        super().__init__()
        self._data = data
        self._sizes = sizes
        self._position = 0
        self._turn = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        size = min(len(buffer), self._sizes[self._turn % len(self._sizes)])
        self._turn += 1
        chunk = self._data[self._position : self._position + size]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def opener(data: bytes, sizes: list[int] | None = None) -> Callable[[], BinaryIO]:
    if sizes is None:
        return lambda: io.BytesIO(data)
    return lambda: ShortReads(data, sizes)  # type: ignore[return-value]


def open_all(data: bytes, limit: int, sizes: list[int] | None = None) -> bytes:
    """Decrypt and read to the end; IntegrityError propagates, as does anything else."""
    return b"".join(decrypt(opener(data, sizes), DEK, IDENTITY, in_memory_limit=limit))


@FUZZ
@given(data=st.binary(max_size=3000), limit=LIMITS)
def test_arbitrary_bytes_are_an_integrity_error(data: bytes, limit: int) -> None:
    with pytest.raises(IntegrityError):
        open_all(data, limit)


@st.composite
def committed_header_and_body(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A genuine header (it passes the magic, bounds and key commitment checks) and a body
    of arbitrary records, so the fuzzing reaches the segment parser."""
    segment_size = draw(st.integers(MIN_SEGMENT_SIZE, 64))
    genuine = seal(draw(st.binary(max_size=200)), segment_size)
    record = st.binary(min_size=0, max_size=segment_size + TAG_SIZE + 2)
    body = b"".join(draw(st.lists(record, max_size=6)))
    return genuine[:HEADER_SIZE], body


@FUZZ
@given(case=committed_header_and_body(), limit=LIMITS)
def test_a_committed_header_with_forged_segments_is_an_integrity_error(
    case: tuple[bytes, bytes], limit: int
) -> None:
    header, body = case
    with pytest.raises(IntegrityError):
        open_all(header + body, limit)


@st.composite
def edited_object(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A sealed object, its plaintext, and the object after several arbitrary edits
    (overwrite, insert, delete, truncate, append) anywhere, header included."""
    segment_size = draw(st.integers(MIN_SEGMENT_SIZE, 48))
    plaintext = draw(st.binary(max_size=300))
    sealed = seal(plaintext, segment_size)
    edited = bytearray(sealed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, len(edited)))
        piece = draw(st.binary(min_size=1, max_size=40))
        if kind == "overwrite":
            edited[at : at + len(piece)] = piece
        elif kind == "insert":
            edited[at:at] = piece
        elif kind == "delete":
            del edited[at : at + len(piece)]
        elif kind == "truncate":
            del edited[at:]
        else:
            edited += piece
    return sealed, plaintext, bytes(edited)


@FUZZ
@given(
    case=edited_object(),
    limit=LIMITS,
    sizes=st.none() | st.lists(st.integers(1, 97), min_size=1, max_size=5),
)
def test_an_edited_object_is_refused_or_is_the_original(
    case: tuple[bytes, bytes, bytes], limit: int, sizes: list[int] | None
) -> None:
    sealed, plaintext, edited = case
    if edited == sealed:  # the edits cancelled out (overwriting a byte with itself)
        assert open_all(edited, limit, sizes) == plaintext
        return
    released: list[bytes] = []
    with pytest.raises(IntegrityError):
        for chunk in decrypt(opener(edited, sizes), DEK, IDENTITY, in_memory_limit=limit):
            released.append(chunk)
    # SECURITY: the whole object is authenticated before the first byte is handed out.
    assert released == []


def mostly(
    valid: st.SearchStrategy[object], invalid: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    """``valid`` four times in five: enough headers get through every check."""
    return st.integers(0, 4).flatmap(lambda n: invalid if n == 0 else valid)


@st.composite
def header_fields(draw: st.DrawFn) -> bytes:
    """Header-sized bytes whose fields are each valid most of the time and otherwise at or
    just past a bound, so that parsing reaches every check and sometimes succeeds."""
    valid_id = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True).map(str.encode)
    key_id = draw(mostly(valid_id, st.binary(max_size=32)))
    assert isinstance(key_id, bytes)
    return struct.pack(
        ">4sBBB32sI32sI7s32s",
        draw(mostly(st.just(b"STCH"), st.sampled_from([b"STCI", b"stch", bytes(4)]))),
        draw(mostly(st.just(1), st.sampled_from([0, 2, 255]))),
        draw(mostly(st.just(1), st.sampled_from([0, 2, 255]))),
        draw(mostly(st.just(len(key_id)), st.sampled_from([0, 33, 255]))),
        key_id,
        draw(mostly(st.integers(1, 2**32 - 1), st.just(0))),
        draw(st.binary(min_size=32, max_size=32)),
        draw(
            mostly(
                st.integers(MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE),
                st.sampled_from([0, MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1, 2**32 - 1]),
            )
        ),
        draw(st.binary(min_size=7, max_size=7)),
        draw(st.binary(min_size=32, max_size=32)),
    )


@FUZZ
@given(
    data=header_fields() | st.binary(max_size=HEADER_SIZE + 8),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
)
def test_read_header_answers_the_same_whatever_the_read_sizes(
    data: bytes, sizes: list[int]
) -> None:
    whole: Header | IntegrityError
    try:
        whole = read_header(io.BytesIO(data))
    except IntegrityError as e:
        whole = e
    try:
        piecewise: Header | IntegrityError = read_header(ShortReads(data, sizes))  # type: ignore[arg-type]
    except IntegrityError as e:
        piecewise = e
    event("parsed" if isinstance(whole, Header) else "refused")
    if isinstance(whole, Header):
        assert piecewise == whole
        # One header, one encoding: what parses re-encodes to the same bytes.
        assert whole.encode() == data[:HEADER_SIZE]
    else:
        assert isinstance(piecewise, IntegrityError)


@FUZZ
@given(case=committed_header_and_body(), limit=LIMITS)
def test_a_wrong_identity_is_refused_before_any_segment(
    case: tuple[bytes, bytes], limit: int
) -> None:
    header, body = case
    other = ObjectIdentity(document_id="document-2", version_id="version-1")
    with pytest.raises(IntegrityError, match="key commitment"):
        b"".join(decrypt(opener(header + body), DEK, other, in_memory_limit=limit))
