"""Generate the object-format test vectors in ``tests/storage/vectors/``.

Run ``python -m tests.storage.make_vectors`` to rewrite them. The output is deterministic
(every key, salt and nonce prefix comes from a SHA-256 counter stream seeded by the vector's
name), and a test checks that the committed files equal what this module builds, so a change
to the format cannot slip through without the vectors changing with it.

Byte offsets below are the ones documented in ``docs/object-format.md`` and are deliberately
written out here rather than taken from ``storage.envelope``: the vectors cross-check the doc.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.envelope import EncryptingReader, ObjectIdentity, SegmentCipher, read_header

VECTORS_DIR = Path(__file__).parent / "vectors"
SEGMENT_SIZE = 64
KEY_ID = "kek"
KEY_VERSION = 1
HEADER_SIZE = 118
TAG_SIZE = 16
RECORD_SIZE = SEGMENT_SIZE + TAG_SIZE
IDENTITY = ObjectIdentity(document_id="doc-0001", version_id="ver-0001")

# Documented header offsets: (start, end).
MAGIC = (0, 4)
FORMAT_VERSION = (4, 5)
ALGORITHM = (5, 6)
KEY_ID_LENGTH = (6, 7)
KEY_ID_FIELD = (7, 39)
KEY_VERSION_FIELD = (39, 43)
SALT = (43, 75)
SEGMENT_SIZE_FIELD = (75, 79)
NONCE_PREFIX = (79, 86)
COMMITMENT = (86, 118)

Vector = dict[str, Any]


def deterministic_random(seed: str) -> Callable[[int], bytes]:
    """A byte source: SHA-256(seed ‖ 8-byte counter) blocks, consumed in order."""
    counter = 0
    buffer = b""

    def take(size: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < size:
            buffer += hashlib.sha256(seed.encode() + struct.pack(">Q", counter)).digest()
            counter += 1
        chunk, buffer = buffer[:size], buffer[size:]
        return chunk

    return take


def seal(plaintext: bytes, dek: bytes, identity: ObjectIdentity, seed: str) -> bytes:
    reader = EncryptingReader(
        io.BytesIO(plaintext),
        dek,
        identity,
        KEY_ID,
        KEY_VERSION,
        segment_size=SEGMENT_SIZE,
        random=deterministic_random(seed),
    )
    return reader.read()


def records(sealed: bytes) -> list[bytes]:
    body = sealed[HEADER_SIZE:]
    return [body[i : i + RECORD_SIZE] for i in range(0, len(body), RECORD_SIZE)]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def put(data: bytes, field: tuple[int, int], value: bytes) -> bytes:
    start, end = field
    assert len(value) == end - start
    return data[:start] + value + data[end:]


def cipher_for(sealed: bytes, dek: bytes, identity: ObjectIdentity) -> SegmentCipher:
    return SegmentCipher(dek, read_header(io.BytesIO(sealed)), identity)


def positive_vectors() -> list[Vector]:
    cases = [
        ("empty", 0, "empty plaintext: exactly one empty final segment"),
        ("one_byte", 1, "a single byte"),
        ("one_segment", SEGMENT_SIZE, "exactly one full segment, which is the final one"),
        ("one_segment_plus_one", SEGMENT_SIZE + 1, "a full segment and a 1-byte final one"),
        ("several_segments", 3 * SEGMENT_SIZE + 22, "three full segments and a partial one"),
        ("segment_multiple", 4 * SEGMENT_SIZE, "four full segments, the last one final"),
    ]
    vectors = []
    for name, size, description in cases:
        take = deterministic_random(f"positive/{name}")
        dek = take(32)
        plaintext = take(size)
        seed = f"positive/{name}/object"
        sealed = seal(plaintext, dek, IDENTITY, seed)
        object_random = deterministic_random(seed)
        vectors.append(
            {
                "name": name,
                "description": description,
                "dek": dek.hex(),
                "document_id": IDENTITY.document_id,
                "version_id": IDENTITY.version_id,
                "key_id": KEY_ID,
                "key_version": KEY_VERSION,
                "segment_size": SEGMENT_SIZE,
                "salt": object_random(32).hex(),
                "nonce_prefix": object_random(7).hex(),
                "plaintext": plaintext.hex(),
                "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
                "sealed": sealed.hex(),
                "expect": "plaintext",
            }
        )
    return vectors


def negative_vectors() -> list[Vector]:
    take = deterministic_random("negative")
    dek = take(32)
    # Base A: 3 segments of 64, 64 and 22 bytes (records of 80, 80 and 38 bytes).
    partial = seal(take(150), dek, IDENTITY, "negative/partial")
    # Base B: exactly 3 full segments, so a record boundary is also a segment boundary.
    full_plaintext = take(3 * SEGMENT_SIZE)
    full = seal(full_plaintext, dek, IDENTITY, "negative/full")
    other = seal(take(150), dek, IDENTITY, "negative/other")
    empty = seal(b"", dek, IDENTITY, "negative/empty")
    header, body = full[:HEADER_SIZE], records(full)
    cipher = cipher_for(full, dek, IDENTITY)
    full_segments = [full_plaintext[i : i + SEGMENT_SIZE] for i in range(0, 192, SEGMENT_SIZE)]

    def key_id_field(key_id: bytes) -> bytes:
        return key_id.ljust(32, b"\x00")

    padding = bytearray(key_id_field(b"kek"))
    padding[10] = 0x41
    cases: list[tuple[str, str, bytes]] = [
        ("header_magic", "first magic byte changed", flip(partial, 0)),
        (
            "header_format_version_future",
            "format version 2 (unknown)",
            put(partial, FORMAT_VERSION, b"\x02"),
        ),
        ("header_format_version_zero", "format version 0", put(partial, FORMAT_VERSION, b"\x00")),
        ("header_algorithm", "algorithm id 2 (unknown)", put(partial, ALGORITHM, b"\x02")),
        (
            "header_key_id_length",
            "key id length 3 -> 2, leaving 'k' in the zero padding",
            put(partial, KEY_ID_LENGTH, b"\x02"),
        ),
        (
            "header_key_id_length_out_of_range",
            "key id length 33",
            put(partial, KEY_ID_LENGTH, b"\x21"),
        ),
        (
            "header_key_id",
            "key id 'kek' -> 'Kek'",
            put(partial, KEY_ID_FIELD, key_id_field(b"Kek")),
        ),
        (
            "header_key_id_padding",
            "non-zero byte in the key id padding",
            put(partial, KEY_ID_FIELD, bytes(padding)),
        ),
        (
            "header_key_version",
            "key version hint 1 -> 2",
            put(partial, KEY_VERSION_FIELD, struct.pack(">I", 2)),
        ),
        (
            "header_key_version_zero",
            "key version hint 0",
            put(partial, KEY_VERSION_FIELD, struct.pack(">I", 0)),
        ),
        ("header_salt", "bit flipped in the salt", flip(partial, SALT[0] + 5)),
        (
            "header_segment_size",
            "segment size 64 -> 65",
            put(partial, SEGMENT_SIZE_FIELD, struct.pack(">I", 65)),
        ),
        (
            "header_segment_size_too_small",
            "segment size 8",
            put(partial, SEGMENT_SIZE_FIELD, struct.pack(">I", 8)),
        ),
        (
            "header_segment_size_too_large",
            "segment size 2**31",
            put(partial, SEGMENT_SIZE_FIELD, struct.pack(">I", 2**31)),
        ),
        (
            "header_nonce_prefix",
            "bit flipped in the nonce prefix",
            flip(partial, NONCE_PREFIX[0] + 3),
        ),
        (
            "header_commitment",
            "bit flipped in the key commitment",
            flip(partial, COMMITMENT[1] - 1),
        ),
        (
            "header_from_other_object",
            "another object's header (same key and identity) on this body",
            other[:HEADER_SIZE] + partial[HEADER_SIZE:],
        ),
        (
            "bitflip_segment_0",
            "bit flipped in segment 0's ciphertext",
            flip(partial, HEADER_SIZE + 10),
        ),
        (
            "bitflip_segment_1",
            "bit flipped in segment 1's ciphertext",
            flip(partial, HEADER_SIZE + RECORD_SIZE + 10),
        ),
        (
            "bitflip_segment_2",
            "bit flipped in the final segment's ciphertext",
            flip(partial, HEADER_SIZE + 2 * RECORD_SIZE + 3),
        ),
        (
            "bitflip_final_tag",
            "bit flipped in the final segment's tag",
            flip(partial, len(partial) - 1, 0x80),
        ),
        ("truncated_empty", "no bytes at all", b""),
        ("truncated_mid_header", "cut inside the header", partial[:50]),
        ("truncated_header_only", "the header and no segment", partial[:HEADER_SIZE]),
        (
            "truncated_segment_boundary",
            "last segment dropped at a segment boundary",
            header + body[0] + body[1],
        ),
        ("truncated_mid_segment", "cut inside the final segment", partial[:-20]),
        ("truncated_last_byte", "last byte dropped", partial[:-1]),
        ("extended_trailing_garbage", "one byte appended", partial + b"\x00"),
        (
            "extended_garbage_record",
            "a record's worth of garbage appended",
            full + bytes(RECORD_SIZE),
        ),
        ("extended_replayed_segment", "segment 0 appended again", full + body[0]),
        (
            "extended_authentic_segment",
            "a segment 3, sealed with the key and flagged final, appended",
            full + cipher.seal(3, True, b"x" * 10),
        ),
        ("segments_swapped", "segments 0 and 1 swapped", header + body[1] + body[0] + body[2]),
        ("segments_reordered", "segments in order 1, 2, 0", header + body[1] + body[2] + body[0]),
        (
            "segment_duplicated",
            "segment 0 in place of segment 1",
            header + body[0] + body[0] + body[2],
        ),
        (
            "segment_from_other_object",
            "segment 1 taken from another object with the same key",
            partial[: HEADER_SIZE + RECORD_SIZE] + records(other)[1] + records(partial)[2],
        ),
        (
            "last_segment_flag_dropped",
            "final segment re-sealed with the key but without the final flag",
            header + body[0] + body[1] + cipher.seal(2, False, full_segments[2]),
        ),
        (
            "early_final_flag",
            "segment 1 re-sealed with the key and flagged final, segment 2 kept",
            header + body[0] + cipher.seal(1, True, full_segments[1]) + body[2],
        ),
        (
            "noncanonical_empty_final_segment",
            "sealed with the key: segment 2 not final, then an empty final segment 3",
            header
            + body[0]
            + body[1]
            + cipher.seal(2, False, full_segments[2])
            + cipher.seal(3, True, b""),
        ),
        (
            "empty_plaintext_bitflip",
            "empty plaintext with its tag changed",
            flip(empty, len(empty) - 1),
        ),
        (
            "empty_plaintext_truncated",
            "empty plaintext with its only segment removed",
            empty[:HEADER_SIZE],
        ),
        ("empty_plaintext_extended", "empty plaintext with a byte appended", empty + b"\x00"),
    ]
    vectors = [
        _negative(name, description, sealed, dek, IDENTITY) for name, description, sealed in cases
    ]
    wrong = [
        (
            "wrong_identity_document_id",
            "right key, other document id",
            dek,
            ObjectIdentity("doc-0002", IDENTITY.version_id),
        ),
        (
            "wrong_identity_version_id",
            "right key, other version id",
            dek,
            ObjectIdentity(IDENTITY.document_id, "ver-0002"),
        ),
        (
            "wrong_identity_fields_swapped",
            "document id and version id exchanged",
            dek,
            ObjectIdentity(IDENTITY.version_id, IDENTITY.document_id),
        ),
        ("wrong_key", "another 32-byte data key", take(32), IDENTITY),
    ]
    vectors += [
        _negative(name, description, partial, key, identity)
        for name, description, key, identity in wrong
    ]
    return vectors


def _negative(
    name: str, description: str, sealed: bytes, dek: bytes, identity: ObjectIdentity
) -> Vector:
    return {
        "name": name,
        "description": description,
        "dek": dek.hex(),
        "document_id": identity.document_id,
        "version_id": identity.version_id,
        "sealed": sealed.hex(),
        "expect": "integrity_error",
    }


def build() -> dict[str, bytes]:
    """File name -> exact file content of every vector file."""
    files = {"positive.json": positive_vectors(), "negative.json": negative_vectors()}
    return {
        name: (json.dumps({"format_version": 1, "vectors": vectors}, indent=2) + "\n").encode()
        for name, vectors in files.items()
    }


def main() -> None:
    VECTORS_DIR.mkdir(exist_ok=True)
    for name, content in build().items():
        (VECTORS_DIR / name).write_bytes(content)
        print(f"wrote {VECTORS_DIR / name}")


if __name__ == "__main__":
    main()
