"""Signed checkpoints: C2SP tlog-checkpoint text in a C2SP signed note, Ed25519."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    CheckpointVerifier,
    SignedCheckpoint,
)
from audit.errors import ProofError, SigningKeyError
from audit.merkle import leaf_hash, root

ORIGIN = "satchel.example/audit"
SIGNED_AT = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
ROOT = root([leaf_hash(str(i).encode()) for i in range(1024)])
CHECKPOINT = Checkpoint(ORIGIN, 1024, ROOT, SIGNED_AT)

# The reference key and note of the Go signed-note implementation (golang.org/x/mod,
# sumdb/note tests), for interoperability.
GO_NAME = "PeterNeumann"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\N{EM DASH} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "checkpoint.key"


@pytest.fixture
def signer(key_path: Path) -> CheckpointSigner:
    key_path.parent.mkdir()
    return CheckpointSigner.create(key_path, name=ORIGIN)


@pytest.fixture
def signed(signer: CheckpointSigner) -> SignedCheckpoint:
    return signer.sign(CHECKPOINT)


def _sign_raw(key_path: Path, text: bytes, *, name: str = ORIGIN) -> bytes:
    """Sign arbitrary note text with the key file, bypassing Checkpoint's own checks."""
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    public = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    blob = base64.b64encode(key_id + private_key.sign(text)).decode()
    return text + f"\n\N{EM DASH} {name} {blob}\n".encode()


def _go_key(encoded: str) -> bytes:
    """The raw key bytes of a Go note key string (after its 0x01 algorithm byte)."""
    # The key material is the last '+'-separated field and may itself contain '+'.
    fields = 4 if encoded.startswith("PRIVATE+KEY+") else 2
    material = base64.b64decode(encoded.split("+", fields)[fields], validate=True)
    assert material[0] == 1
    return material[1:]


# --- Round trip and format --------------------------------------------------------------


def test_round_trip(signer: CheckpointSigner, signed: SignedCheckpoint, key_path: Path) -> None:
    assert signed.checkpoint == CHECKPOINT
    assert signer.verifier().verify(signed.note) == CHECKPOINT
    pinned = CheckpointVerifier.from_public_key_pem(signer.public_key_pem(), name=ORIGIN)
    assert pinned.verify(signed.note) == CHECKPOINT
    reloaded = CheckpointSigner.load(key_path, name=ORIGIN)
    assert reloaded.public_key_pem() == signer.public_key_pem()
    assert reloaded.verifier().verify(signed.note) == CHECKPOINT


def test_note_is_a_c2sp_checkpoint(signer: CheckpointSigner, signed: SignedCheckpoint) -> None:
    text, separator, signature_line = signed.note.partition(b"\n\n")
    assert separator
    body = text + b"\n"
    assert body == CHECKPOINT.body()
    assert body.decode().split("\n") == [
        ORIGIN,
        "1024",
        base64.b64encode(ROOT).decode(),
        "time 2025-01-31T12:00:00Z",
        "",
    ]
    dash, name, blob = signature_line.decode().rstrip("\n").split(" ")
    assert (dash, name) == ("\N{EM DASH}", ORIGIN)
    assert signature_line.endswith(b"\n") and signature_line.count(b"\n") == 1
    decoded = base64.b64decode(blob, validate=True)
    public_key = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public_key, Ed25519PublicKey)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert decoded[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    public_key.verify(decoded[4:], body)  # raises if the signature is not over the body


def test_interoperates_with_the_go_signed_note_reference() -> None:
    go_signer = CheckpointSigner(
        Ed25519PrivateKey.from_private_bytes(_go_key(GO_SIGNER_KEY)), name=GO_NAME
    )
    go_verifier = CheckpointVerifier(
        Ed25519PublicKey.from_public_bytes(_go_key(GO_VERIFIER_KEY)), name=GO_NAME
    )
    note = go_signer.sign(CHECKPOINT).note
    blob = base64.b64decode(note.decode().rstrip("\n").rsplit(" ", 1)[1])
    assert blob[:4].hex() == GO_VERIFIER_KEY.split("+")[1]
    assert go_verifier.verify(note) == CHECKPOINT
    # The reference note's signature verifies; its text is simply not a checkpoint.
    with pytest.raises(ProofError, match="lines"):
        go_verifier.verify(GO_NOTE)
    tampered = GO_NOTE.replace(b"answer", b"Answer")
    with pytest.raises(ProofError, match="does not verify"):
        go_verifier.verify(tampered)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2025, 1, 31, 14, 0, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_timestamps_round_trip_in_utc(signer: CheckpointSigner, moment: datetime) -> None:
    checkpoint = Checkpoint(ORIGIN, 7, ROOT, moment)
    assert checkpoint.timestamp.utcoffset() == timedelta(0)
    verified = signer.verifier().verify(signer.sign(checkpoint).note)
    assert verified == checkpoint
    assert verified.timestamp == moment


def test_empty_tree_checkpoint(signer: CheckpointSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 0, root([]), SIGNED_AT)
    assert b"\n0\n" in checkpoint.body()
    assert signer.verifier().verify(signer.sign(checkpoint).note) == checkpoint


# --- Tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\n1024\n", b"\n1023\n"),
        (b"\n1024\n", b"\n10240\n"),
        (base64.b64encode(ROOT), base64.b64encode(leaf_hash(b"other root"))),
        (b"2025-01-31T12:00:00Z", b"2025-01-31T12:00:01Z"),
        (ORIGIN.encode() + b"\n", b"satchel.example/other\n"),
        (b"time ", b"time  "),
    ],
    ids=["size", "size-longer", "root", "time", "origin", "extension"],
)
def test_changed_body_fails(
    signer: CheckpointSigner, signed: SignedCheckpoint, old: bytes, new: bytes
) -> None:
    assert signed.note.count(old) == 1
    with pytest.raises(ProofError, match="does not verify"):
        signer.verifier().verify(signed.note.replace(old, new))


def test_signature_bit_flips_fail(signer: CheckpointSigner, signed: SignedCheckpoint) -> None:
    prefix, blob = signed.note.rstrip(b"\n").rsplit(b" ", 1)
    raw = base64.b64decode(blob)
    for bit in range(32, len(raw) * 8, 7):  # past the 4-byte key ID
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        note = prefix + b" " + base64.b64encode(bytes(flipped)) + b"\n"
        with pytest.raises(ProofError, match="does not verify"):
            signer.verifier().verify(note)


def test_signature_from_another_key_fails(
    signer: CheckpointSigner, signed: SignedCheckpoint, tmp_path: Path
) -> None:
    impostor = CheckpointSigner.create(tmp_path / "impostor.key", name=ORIGIN)
    forged = impostor.sign(CHECKPOINT).note
    with pytest.raises(ProofError, match="no signature by key"):
        signer.verifier().verify(forged)
    with pytest.raises(ProofError, match="no signature by key"):
        impostor.verifier().verify(signed.note)


def test_signature_under_another_name_fails(
    signer: CheckpointSigner, signed: SignedCheckpoint, key_path: Path
) -> None:
    same_key_other_name = CheckpointSigner.load(key_path, name="satchel.example/other")
    with pytest.raises(ProofError, match="no signature by key"):
        same_key_other_name.verifier().verify(signed.note)
    with pytest.raises(ProofError, match="no signature by key"):
        signer.verifier().verify(same_key_other_name.sign(CHECKPOINT).note)


def test_unknown_extra_signatures_are_ignored(
    signer: CheckpointSigner, signed: SignedCheckpoint, tmp_path: Path
) -> None:
    witness = CheckpointSigner.create(tmp_path / "witness.key", name="witness.example/w1")
    witness_line = witness.sign(CHECKPOINT).note.partition(b"\n\n")[2]
    cosigned = signed.note + witness_line
    assert signer.verifier().verify(cosigned) == CHECKPOINT
    assert witness.verifier().verify(cosigned) == CHECKPOINT


def test_every_truncation_fails(signer: CheckpointSigner, signed: SignedCheckpoint) -> None:
    verifier = signer.verifier()
    for length in range(len(signed.note)):
        with pytest.raises(ProofError):
            verifier.verify(signed.note[:length])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda note: note + b"\n",
        lambda note: note + b"trailing",
        lambda note: b"\n" + note,
        lambda note: note.replace(b"\n\n", b"\n"),
        lambda note: note.replace(b"\n\n", b"\n\n\n"),
        lambda note: note.replace("\N{EM DASH}".encode(), b"-"),
        lambda note: note.replace(b"\n", b"\r\n"),
        lambda note: note.replace(b"\n1024\n", b"\n10\x0024\n"),
        lambda note: note.replace(b"satchel", b"\xffsatchel"),
        lambda note: note.replace("\N{EM DASH} ".encode(), "\N{EM DASH}  ".encode()),
        lambda note: note[:-2] + b"!\n",
        lambda note: note.rstrip(b"\n") + b" extra\n",
        lambda note: note + b"x" * (128 * 1024),
    ],
    ids=[
        "blank-line-after",
        "trailing-garbage",
        "leading-newline",
        "no-blank-line",
        "two-blank-lines",
        "hyphen-not-em-dash",
        "crlf",
        "nul-byte",
        "invalid-utf8",
        "double-space",
        "bad-base64",
        "extra-field",
        "oversized",
    ],
)
def test_malformed_notes_fail(
    signer: CheckpointSigner, signed: SignedCheckpoint, mangle: Callable[[bytes], bytes]
) -> None:
    note = mangle(signed.note)
    assert note != signed.note
    with pytest.raises(ProofError):
        signer.verifier().verify(note)


@pytest.mark.parametrize(
    "text",
    [
        "satchel.example/audit\n01024\n{root}\ntime 2025-01-31T12:00:00Z\n",
        "satchel.example/audit\n+1024\n{root}\ntime 2025-01-31T12:00:00Z\n",
        "satchel.example/audit\n1024\n{root}\ntime 2025-01-31T12:00:00.000000Z\n",
        "satchel.example/audit\n1024\n{root}\ntime 2025-01-31T12:00:00+00:00\n",
        "satchel.example/audit\n1024\n{root}\ntime 2025-02-30T12:00:00Z\n",
        "satchel.example/audit\n1024\n{root}\n",
        "satchel.example/audit\n1024\n{root}\ntime 2025-01-31T12:00:00Z\nmore\n",
        "satchel.example/audit\n1024\n{root}\nwhen 2025-01-31T12:00:00Z\n",
        "satchel.example/audit\n1024\n{short_root}\ntime 2025-01-31T12:00:00Z\n",
        "satchel.example/audit\n1024\n{root_unpadded}\ntime 2025-01-31T12:00:00Z\n",
        "satchel example\n1024\n{root}\ntime 2025-01-31T12:00:00Z\n",
        "satchel.example/audit\n\uff11024\n{root}\ntime 2025-01-31T12:00:00Z\n",
    ],
    ids=[
        "leading-zero",
        "plus-sign",
        "zero-fraction",
        "offset-not-z",
        "impossible-date",
        "no-time-line",
        "extra-extension",
        "wrong-extension",
        "short-root",
        "unpadded-root",
        "space-in-origin",
        "non-ascii-digit",
    ],
)
def test_signed_but_non_canonical_text_fails(
    signer: CheckpointSigner, key_path: Path, text: str
) -> None:
    encoded_root = base64.b64encode(ROOT).decode()
    body = text.format(
        root=encoded_root,
        short_root=base64.b64encode(ROOT[:31]).decode(),
        root_unpadded=encoded_root.rstrip("="),
    ).encode()
    with pytest.raises(ProofError, match="checkpoint"):
        signer.verifier().verify(_sign_raw(key_path, body))


# --- Checkpoint values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "satchel example"},
        {"origin": "satchel+example"},
        {"origin": "satchel\nexample"},
        {"tree_size": -1},
        {"root_hash": ROOT[:31]},
        {"timestamp": datetime(2025, 1, 31, 12, 0, 0)},
    ],
    ids=["empty-origin", "space", "plus", "newline", "negative-size", "short-root", "naive"],
)
def test_invalid_checkpoints_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "origin": ORIGIN,
        "tree_size": 1,
        "root_hash": ROOT,
        "timestamp": SIGNED_AT,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):
        Checkpoint(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "two words", "a+b", "tab\tname"])
def test_invalid_key_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CheckpointSigner.create(tmp_path / "k.key", name=name)
    assert not (tmp_path / "k.key").exists()
    with pytest.raises(ValueError):
        CheckpointVerifier(Ed25519PrivateKey.generate().public_key(), name=name)


# --- Key files ----------------------------------------------------------------------------


def test_create_writes_a_private_pkcs8_file(signer: CheckpointSigner, key_path: Path) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert sorted(p.name for p in key_path.parent.iterdir()) == [key_path.name]


def test_create_refuses_to_overwrite(signer: CheckpointSigner, key_path: Path) -> None:
    before = key_path.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists") as raised:
        CheckpointSigner.create(key_path, name=ORIGIN)
    assert raised.value.path == str(key_path)
    assert key_path.read_bytes() == before
    assert sorted(p.name for p in key_path.parent.iterdir()) == [key_path.name]


def test_create_into_a_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError):
        CheckpointSigner.create(tmp_path / "absent" / "checkpoint.key", name=ORIGIN)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_load(signer: CheckpointSigner, key_path: Path, mode: int) -> None:
    key_path.chmod(mode)
    assert CheckpointSigner.load(key_path, name=ORIGIN).public_key_pem() == (
        signer.public_key_pem()
    )


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o620, 0o660, 0o700 | 0o001])
def test_group_or_world_access_is_refused(
    signer: CheckpointSigner, key_path: Path, mode: int
) -> None:
    key_path.chmod(mode)
    with pytest.raises(SigningKeyError, match="chmod 600") as raised:
        CheckpointSigner.load(key_path, name=ORIGIN)
    assert raised.value.path == str(key_path)
    assert str(key_path) in str(raised.value)


def test_load_refuses_missing_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError) as raised:
        CheckpointSigner.load(tmp_path / "absent.key", name=ORIGIN)
    assert raised.value.path == str(tmp_path / "absent.key")
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(SigningKeyError):
        CheckpointSigner.load(directory, name=ORIGIN)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SigningKeyError, match="regular file"):
        CheckpointSigner.load(fifo, name=ORIGIN)


def test_load_refuses_keys_that_are_not_ed25519(tmp_path: Path) -> None:
    wrong_type = tmp_path / "ec.key"
    wrong_type.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    wrong_type.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        CheckpointSigner.load(wrong_type, name=ORIGIN)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key\n")
    garbage.chmod(0o600)
    with pytest.raises(SigningKeyError, match="PEM"):
        CheckpointSigner.load(garbage, name=ORIGIN)


def test_verifier_refuses_public_keys_that_are_not_ed25519() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        CheckpointVerifier.from_public_key_pem(ec_pem, name=ORIGIN)
    with pytest.raises(SigningKeyError, match="PEM"):
        CheckpointVerifier.from_public_key_pem(b"not a key", name=ORIGIN)
