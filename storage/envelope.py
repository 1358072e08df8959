"""The encrypted object format: streaming envelope encryption and authenticated decryption.

One object holds one document version. A fresh 256-bit data key (DEK) seals it; the DEK is
wrapped by the keyring and the wrapped value lives only in SQL, never in the object, so that
deleting it is crypto-shredding (see ``docs/object-format.md`` for the byte layout, the
derivations and the reasons).

``EncryptingReader`` turns a plaintext stream into the sealed object lazily, holding at most a
few segments. ``decrypt`` authenticates the *whole* object before it releases a single
plaintext byte, in memory for small objects and in a verifying first pass for large ones.
Every integrity failure raises :class:`storage.errors.IntegrityError`, whatever its cause.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.errors import IntegrityError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

FORMAT_VERSION = 1
DEFAULT_SEGMENT_SIZE = 64 * 1024
DEFAULT_IN_MEMORY_LIMIT = 8 * 1024 * 1024
# Bounds on the segment size keep a hostile header from making a reader allocate much:
# a reader never holds more than a few records of at most MAX_SEGMENT_SIZE + TAG_SIZE bytes.
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 1024 * 1024

MAGIC = b"STCH"
DEK_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
COMMITMENT_SIZE = 32
TAG_SIZE = 16
MAX_KEY_ID_LENGTH = 32
MAX_KEY_VERSION = 2**32 - 1
# The segment index is a 32-bit field of the nonce.
MAX_SEGMENTS = 2**32
MAX_IDENTITY_FIELD_BYTES = 1024

KEY_ID_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_KEY_ID_LENGTH}}}")

# magic, format version, algorithm, key id length, key id (zero padded), key version,
# salt, segment size, nonce prefix, key commitment. Fixed size, so a reader reads exactly
# HEADER_SIZE bytes and sealed_size() needs no key id.
_HEADER = struct.Struct(">4sBBB32sI32sI7s32s")
HEADER_SIZE = _HEADER.size

_SEGMENT_KEY_LABEL = b"satchel.object.segment-key"
_COMMITMENT_LABEL = b"satchel.object.key-commitment"


class Algorithm(IntEnum):
    """Algorithm identifiers of the header's ``algorithm`` byte."""

    # AES-256-GCM segments, HKDF-SHA256 key derivation and key commitment.
    AES_256_GCM_HKDF_SHA256 = 1


def check_key_id(key_id: str) -> None:
    """Raise ``ValueError`` unless ``key_id`` is 1-32 characters of ``[A-Za-z0-9._-]``."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id!r} must be 1-{MAX_KEY_ID_LENGTH} characters of [A-Za-z0-9._-]"
        )


@dataclass(frozen=True)
class ObjectIdentity:
    """Which document version an object belongs to; bound into its keys.

    Raises ``ValueError`` if either field is empty or longer than 1024 UTF-8 bytes.
    """

    document_id: str
    version_id: str

    def __post_init__(self) -> None:
        for name, value in (("document_id", self.document_id), ("version_id", self.version_id)):
            if not value or len(value.encode("utf-8")) > MAX_IDENTITY_FIELD_BYTES:
                raise ValueError(f"{name} must be 1-{MAX_IDENTITY_FIELD_BYTES} UTF-8 bytes")

    def encode(self) -> bytes:
        """Canonical bytes: each field as a 4-byte big-endian length and its UTF-8 bytes."""
        out = bytearray()
        for value in (self.document_id, self.version_id):
            raw = value.encode("utf-8")
            out += struct.pack(">I", len(raw)) + raw
        return bytes(out)


@dataclass(frozen=True)
class Header:
    """The parsed, fixed-size object header. ``key_id``/``key_version`` are a hint only."""

    key_id: str
    key_version: int
    salt: bytes
    segment_size: int
    nonce_prefix: bytes
    commitment: bytes
    format_version: int = FORMAT_VERSION
    algorithm: Algorithm = Algorithm.AES_256_GCM_HKDF_SHA256

    def encode(self) -> bytes:
        """The header's exact bytes (the inverse of :func:`read_header`).

        Raises ``ValueError`` for a key id that the format cannot hold.
        """
        check_key_id(self.key_id)
        key_id = self.key_id.encode("ascii")
        return _HEADER.pack(
            MAGIC,
            self.format_version,
            self.algorithm,
            len(key_id),
            key_id,  # struct pads the 32-byte field with zero bytes
            self.key_version,
            self.salt,
            self.segment_size,
            self.nonce_prefix,
            self.commitment,
        )


def sealed_size(plaintext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The exact size of the sealed object for a plaintext of ``plaintext_size`` bytes."""
    _check_segment_size(segment_size)
    if plaintext_size < 0:
        raise ValueError("plaintext_size must not be negative")
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER_SIZE + plaintext_size + segments * TAG_SIZE


def read_header(stream: BinaryIO) -> Header:
    """Read and parse exactly ``HEADER_SIZE`` bytes from ``stream``.

    Raises IntegrityError if the header is short, has the wrong magic, an unknown format
    version or algorithm, or any field outside its bounds. The header is *not* authenticated
    here: that needs the DEK (commitment, then every segment's tag).
    """
    return _parse_header(_read_exact(stream, HEADER_SIZE))


def _parse_header(data: bytes) -> Header:
    if len(data) != HEADER_SIZE:
        raise IntegrityError("object header is truncated")
    fields = _HEADER.unpack(data)
    magic, version, algorithm, key_id_length, key_id_field, key_version = fields[:6]
    salt, segment_size, nonce_prefix, commitment = fields[6:]
    if not hmac.compare_digest(magic, MAGIC):
        raise IntegrityError("object header has the wrong magic")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"object format version {version} is not supported")
    if algorithm not in {member.value for member in Algorithm}:
        raise IntegrityError(f"object algorithm {algorithm} is not supported")
    if not 1 <= key_id_length <= MAX_KEY_ID_LENGTH:
        raise IntegrityError("object header key id length is out of range")
    key_id_bytes = key_id_field[:key_id_length]
    # SECURITY: the padding must be zero so that one header has exactly one encoding.
    if any(key_id_field[key_id_length:]):
        raise IntegrityError("object header key id padding is not zero")
    key_id = key_id_bytes.decode("ascii", errors="replace")
    if not KEY_ID_PATTERN.fullmatch(key_id) or key_version < 1:
        raise IntegrityError("object header key hint is malformed")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise IntegrityError("object header segment size is out of range")
    return Header(
        key_id=key_id,
        key_version=key_version,
        salt=salt,
        segment_size=segment_size,
        nonce_prefix=nonce_prefix,
        commitment=commitment,
        format_version=version,
        algorithm=Algorithm(algorithm),
    )


def _derive(dek: bytes, salt: bytes, label: bytes, identity: ObjectIdentity) -> bytes:
    # info = label ‖ 0x00 ‖ format version ‖ identity: the label separates the two uses,
    # the identity binds the keys to one document version.
    info = label + b"\x00" + bytes([FORMAT_VERSION]) + identity.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dek)


def _check_dek(dek: bytes) -> None:
    if len(dek) != DEK_SIZE:
        raise ValueError(f"a data key is {DEK_SIZE} bytes, not {len(dek)}")


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes"
        )


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Concatenated:
    """Reads ``first`` to its end, then ``rest``."""

    def __init__(self, first: bytes, rest: _Reader) -> None:
        self._first: io.BytesIO | None = io.BytesIO(first)
        self._rest = rest

    def read(self, size: int, /) -> bytes:
        if self._first is not None:
            chunk = self._first.read(size)
            if chunk:
                return chunk
            self._first = None  # read: let it go
        return self._rest.read(size)


def _read_exact(stream: _Reader, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of stream (reads may return short)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class SegmentCipher:
    """Seals and opens the segments of one object.

    The segment key is HKDF-SHA256(DEK, salt, identity); every segment's AAD is the whole
    header; its nonce is ``nonce_prefix ‖ index (u32) ‖ final flag (u8)``.
    """

    def __init__(self, dek: bytes, header: Header, identity: ObjectIdentity) -> None:
        _check_dek(dek)
        self._aead = AESGCM(_derive(dek, header.salt, _SEGMENT_KEY_LABEL, identity))
        self._aad = header.encode()
        self._nonce_prefix = header.nonce_prefix

    def _nonce(self, index: int, final: bool) -> bytes:
        return self._nonce_prefix + struct.pack(">IB", index, 1 if final else 0)

    def seal(self, index: int, final: bool, plaintext: bytes) -> bytes:
        """The record (ciphertext ‖ 16-byte tag) of segment ``index``."""
        return self._aead.encrypt(self._nonce(index, final), plaintext, self._aad)

    def open(self, index: int, final: bool, record: bytes | memoryview) -> bytes:
        """The plaintext of segment ``index``; IntegrityError if the record fails its tag."""
        try:
            return self._aead.decrypt(self._nonce(index, final), record, self._aad)
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None


def _new_header(
    dek: bytes,
    identity: ObjectIdentity,
    key_id: str,
    key_version: int,
    segment_size: int,
    random: Callable[[int], bytes],
) -> Header:
    check_key_id(key_id)
    if not 1 <= key_version <= MAX_KEY_VERSION:
        raise ValueError(f"key_version must be between 1 and {MAX_KEY_VERSION}")
    _check_segment_size(segment_size)
    salt = random(SALT_SIZE)
    nonce_prefix = random(NONCE_PREFIX_SIZE)
    if len(salt) != SALT_SIZE or len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise ValueError("random returned the wrong number of bytes")
    return Header(
        key_id=key_id,
        key_version=key_version,
        salt=salt,
        segment_size=segment_size,
        nonce_prefix=nonce_prefix,
        commitment=_derive(dek, salt, _COMMITMENT_LABEL, identity),
    )


class _SealingStream(io.RawIOBase):
    """The raw stream behind :class:`EncryptingReader`: seals one segment at a time."""

    def __init__(
        self,
        plaintext: BinaryIO,
        dek: bytes,
        identity: ObjectIdentity,
        key_id: str,
        key_version: int,
        segment_size: int,
        random: Callable[[int], bytes],
        hash_plaintext: bool,
    ) -> None:
        super().__init__()
        _check_dek(dek)
        self.header = _new_header(dek, identity, key_id, key_version, segment_size, random)
        self._cipher = SegmentCipher(dek, self.header, identity)
        self._plaintext = plaintext
        self._segment_size = segment_size
        # Sealed bytes not yet handed out (the header, then one record at a time) and
        # how many of them have been: records are copied once, straight to the reader.
        self._pending = self.header.encode()
        self._handed_out = 0
        # One plaintext segment of look-ahead, to know whether the current one is the last.
        self._lookahead: bytes | None = None
        self._index = 0
        self._finished = False
        self._sha256 = hashlib.sha256() if hash_plaintext else None
        self._size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` as far as the object goes, sealing segments as needed."""
        with memoryview(buffer) as view, view.cast("B") as target:
            written = 0
            while written < len(target):
                if self._handed_out == len(self._pending):
                    if self._finished:
                        break
                    self._seal_next()
                count = min(len(target) - written, len(self._pending) - self._handed_out)
                with memoryview(self._pending) as pending:
                    target[written : written + count] = pending[
                        self._handed_out : self._handed_out + count
                    ]
                self._handed_out += count
                written += count
            return written

    def close(self) -> None:
        self._pending = b""
        self._handed_out = 0
        self._lookahead = None
        super().close()

    def _read_segment(self) -> bytes:
        chunk = _read_exact(self._plaintext, self._segment_size)
        if self._sha256 is not None:
            self._sha256.update(chunk)
        self._size += len(chunk)
        return chunk

    def _seal_next(self) -> None:
        current = self._lookahead if self._lookahead is not None else self._read_segment()
        self._lookahead = None
        if len(current) < self._segment_size:
            final = True
        else:
            following = self._read_segment()
            final = not following
            self._lookahead = following or None
        if self._index >= MAX_SEGMENTS:
            raise ValueError("plaintext is too large for this segment size")
        self._pending = self._cipher.seal(self._index, final, current)
        self._handed_out = 0
        self._index += 1
        self._finished = final

    def _require_finished(self, name: str) -> None:
        if not self._finished:
            raise RuntimeError(f"{name} is known only once the plaintext has been read to its end")

    @property
    def plaintext_size(self) -> int:
        self._require_finished("plaintext_size")
        return self._size

    @property
    def plaintext_sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("plaintext_sha256 is not computed when hash_plaintext is False")
        self._require_finished("plaintext_sha256")
        return self._sha256.hexdigest()


if TYPE_CHECKING:
    _BufferedSealingStream = io.BufferedReader[_SealingStream]
else:
    _BufferedSealingStream = io.BufferedReader


class EncryptingReader(_BufferedSealingStream):
    """A read-only, non-seekable binary stream of the sealed object for ``plaintext``.

    Honours any ``read(n)`` size and holds at most about two segments, so it can go straight
    to ``upload_fileobj`` or a file writer. ``plaintext_size`` and ``plaintext_sha256``
    raise ``RuntimeError`` until the plaintext has been read to its end;
    ``hash_plaintext=False`` skips the SHA-256 for a caller that hashes the plaintext
    itself (the vault hashes its spool), and ``plaintext_sha256`` then always raises
    ``RuntimeError``. Raises ``ValueError`` for a
    DEK that is not 32 bytes or an invalid key id, key version or segment size. The
    plaintext stream is not closed by this reader.
    """

    def __init__(
        self,
        plaintext: BinaryIO,
        dek: bytes,
        identity: ObjectIdentity,
        key_id: str,
        key_version: int,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        random: Callable[[int], bytes] = os.urandom,
        hash_plaintext: bool = True,
    ) -> None:
        self._sealer = _SealingStream(
            plaintext, dek, identity, key_id, key_version, segment_size, random, hash_plaintext
        )
        super().__init__(self._sealer)

    @property
    def header(self) -> Header:
        return self._sealer.header

    @property
    def plaintext_size(self) -> int:
        return self._sealer.plaintext_size

    @property
    def plaintext_sha256(self) -> str:
        return self._sealer.plaintext_sha256


def _records(stream: _Reader, record_size: int) -> Iterator[bytes]:
    """The records of ``stream`` in order: ``record_size`` bytes each but the last."""
    while record := _read_exact(stream, record_size):
        yield record
        if len(record) < record_size:
            return


def _records_in(buffer: bytes, record_size: int) -> Iterator[memoryview]:
    """The records of ``buffer`` in order, as views of it rather than copies."""
    view = memoryview(buffer)
    for start in range(0, len(view), record_size):
        yield view[start : start + record_size]


def _open_segments(records: Iterator[bytes | memoryview], cipher: SegmentCipher) -> Iterator[bytes]:
    """Authenticate and yield the plaintext of each record of ``records`` in order.

    The last segment is the one no record follows; it must carry the final flag and every
    other segment must not, so truncation and extension fail a tag.
    """
    current = next(records, None)
    if current is None:
        raise IntegrityError("object has no segments")
    index = 0
    while True:
        following = next(records, None)
        final = following is None
        if index >= MAX_SEGMENTS:
            raise IntegrityError("object has too many segments")
        if len(current) < TAG_SIZE:
            raise IntegrityError(f"segment {index} is truncated")
        # SECURITY: only the empty plaintext is one empty segment; an empty last segment
        # after others is not an encoding this format produces, so it is refused even if
        # its tag is valid (one plaintext, one encoding).
        if index > 0 and len(current) == TAG_SIZE:
            raise IntegrityError(f"segment {index} is an empty segment after the first")
        yield cipher.open(index, final, current)
        if following is None:
            return
        current = following
        index += 1


def _verifying_pass(
    stream: BinaryIO, dek: bytes, identity: ObjectIdentity, in_memory_limit: int
) -> tuple[bytes, list[bytes] | None]:
    """Authenticate the whole object; keep its plaintext if it fits within the limit.

    After the header, as much as an object that fits can hold is read in one call: most
    objects then arrive in one read rather than one per segment.
    """
    header = read_header(stream)
    # SECURITY: the key commitment is checked, in constant time, before any segment is
    # decrypted, so a wrong DEK or identity never gets as far as AES-GCM.
    expected = _derive(dek, header.salt, _COMMITMENT_LABEL, identity)
    if not hmac.compare_digest(expected, header.commitment):
        raise IntegrityError("key commitment does not match (wrong key or identity)")
    cipher = SegmentCipher(dek, header, identity)
    record_size = header.segment_size + TAG_SIZE
    fitting = sealed_size(in_memory_limit, header.segment_size) - HEADER_SIZE
    first = _read_exact(stream, fitting + 1)
    if len(first) <= fitting:
        kept = list(_open_segments(_records_in(first, record_size), cipher))
        return header.encode(), kept
    # Too large to keep: a second pass will decrypt again.
    whole = _Concatenated(first, stream)
    del first  # held by ``whole`` only until read
    for _ in _open_segments(_records(whole, record_size), cipher):
        pass
    return header.encode(), None


def _decrypting_pass(
    open_ciphertext: Callable[[], BinaryIO],
    dek: bytes,
    identity: ObjectIdentity,
    verified_header: bytes,
) -> Iterator[bytes]:
    stream = open_ciphertext()
    try:
        header = read_header(stream)
        # SECURITY: the object must be the one the first pass verified; each segment is
        # authenticated again before it is yielded, and a truncation still fails at the end.
        if not hmac.compare_digest(header.encode(), verified_header):
            raise IntegrityError("object changed between the verifying and decrypting passes")
        cipher = SegmentCipher(dek, header, identity)
        yield from _open_segments(_records(stream, header.segment_size + TAG_SIZE), cipher)
    finally:
        stream.close()


def decrypt(
    open_ciphertext: Callable[[], BinaryIO],
    dek: bytes,
    identity: ObjectIdentity,
    *,
    in_memory_limit: int = DEFAULT_IN_MEMORY_LIMIT,
) -> Iterator[bytes]:
    """Authenticate the object, then return an iterator over its plaintext.

    The whole object is verified before this returns: ``open_ciphertext`` is called once and
    the plaintext kept in memory if it is at most ``in_memory_limit`` bytes; otherwise it is
    called a second time, lazily, and each segment is authenticated again as it is yielded.
    Every stream it returns is closed. Raises IntegrityError for any tampering, truncation,
    extension, reordering, wrong key or wrong identity (then no plaintext has been released);
    the iterator raises IntegrityError if the object changed between the two passes.
    ``ValueError`` for a DEK that is not 32 bytes. Errors of ``open_ciphertext`` propagate.
    """
    _check_dek(dek)
    stream = open_ciphertext()
    try:
        verified_header, kept = _verifying_pass(stream, dek, identity, in_memory_limit)
    finally:
        stream.close()
    if kept is not None:
        return iter(kept)
    return _decrypting_pass(open_ciphertext, dek, identity, verified_header)
