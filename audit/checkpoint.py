"""Signed checkpoints of the audit log's Merkle tree.

A checkpoint is the C2SP ``tlog-checkpoint`` text, signed as a C2SP ``signed-note`` with
Ed25519::

    satchel.example/audit
    1024
    <base64 root hash>
    time 2025-01-31T12:00:00Z

    — satchel.example/audit <base64(4-byte key ID || 64-byte Ed25519 signature)>

The key ID is ``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``. The one
extension line carries the signing time, so a checkpoint also dates the log it seals.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# cryptography is imported in audit/ for Ed25519 checkpoint signatures only; every other
# use of cryptography in Satchel lives in storage/.
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.errors import ProofError, SigningKeyError
from audit.merkle import HASH_SIZE

__all__ = ["Checkpoint", "CheckpointSigner", "CheckpointVerifier", "SignedCheckpoint"]

_ED25519_SIGNATURE_TYPE = b"\x01"
_ED25519_SIGNATURE_SIZE = 64
_KEY_ID_SIZE = 4
_SIGNATURE_PREFIX = "\N{EM DASH} "
_TIME_PREFIX = "time "
# signed-note asks verifiers to bound a note's size while accepting at least 16
# signatures of up to about 5 kB each.
_MAX_NOTE_BYTES = 128 * 1024
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{6}))?Z"
)


@dataclass(frozen=True)
class Checkpoint:
    """The tree head of the audit log at ``tree_size`` leaves.

    ``timestamp`` must be timezone-aware and is stored in UTC. Raises ``ValueError`` for
    an origin that is empty or holds spaces, ``+`` or control characters, a negative
    size, a root hash that is not 32 bytes, or a naive timestamp.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: datetime

    def __post_init__(self) -> None:
        _check_name("origin", self.origin)
        if self.tree_size < 0:
            raise ValueError(f"tree size must not be negative, got {self.tree_size}")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError(f"root hash must be {HASH_SIZE} bytes, got {len(self.root_hash)}")
        if self.timestamp.utcoffset() is None:
            raise ValueError("checkpoint timestamp must be timezone-aware")
        # Normalised so that a checkpoint read back from its note compares and prints
        # the same as the one that was signed.
        object.__setattr__(self, "timestamp", self.timestamp.astimezone(UTC))

    def body(self) -> bytes:
        """Return the note text: origin, size, base64 root and ``time`` lines."""
        lines = (
            self.origin,
            str(self.tree_size),
            base64.b64encode(self.root_hash).decode("ascii"),
            _TIME_PREFIX + _format_timestamp(self.timestamp),
        )
        return "".join(line + "\n" for line in lines).encode("utf-8")


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with ``note``, the exact signed-note bytes to store and publish."""

    checkpoint: Checkpoint
    note: bytes


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key under the signed-note key ``name``.

    Raises ``ValueError`` if ``name`` is empty or holds spaces, ``+`` or control
    characters.
    """

    def __init__(self, private_key: Ed25519PrivateKey, *, name: str) -> None:
        _check_name("key name", name)
        self._private_key = private_key
        self._name = name

    @classmethod
    def create(cls, path: Path, *, name: str) -> CheckpointSigner:
        """Generate a key and write it to a new file at ``path`` (PEM PKCS #8, mode 0600).

        The file appears complete or not at all. Raises
        :class:`~audit.errors.SigningKeyError` if ``path`` already exists or cannot be
        written.
        """
        _check_name("key name", name)
        private_key = Ed25519PrivateKey.generate()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new_private_file(path, pem)
        return cls(private_key, name=name)

    @classmethod
    def load(cls, path: Path, *, name: str) -> CheckpointSigner:
        """Read the key written by :meth:`create`.

        Raises :class:`~audit.errors.SigningKeyError` naming ``path`` if the file is
        missing or unreadable, is not a regular file, grants any access to group or
        others, or does not hold an Ed25519 private key.
        """
        pem = _read_private_file(path)
        try:
            private_key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise SigningKeyError(f"not a readable PEM private key: {e}", path=str(path)) from e
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningKeyError("the key is not an Ed25519 key", path=str(path))
        return cls(private_key, name=name)

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        """Return ``checkpoint`` as a signed note carrying one signature by this key."""
        body = checkpoint.body()
        signature = self._private_key.sign(body)
        key_id = _key_id(self._name, self._private_key.public_key())
        line = f"{_SIGNATURE_PREFIX}{self._name} {base64.b64encode(key_id + signature).decode()}\n"
        return SignedCheckpoint(checkpoint, body + b"\n" + line.encode("utf-8"))

    def public_key_pem(self) -> bytes:
        """Return the public key as PEM SubjectPublicKeyInfo, for verifiers to pin."""
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifier(self) -> CheckpointVerifier:
        """Return a verifier for this key and name."""
        return CheckpointVerifier(self._private_key.public_key(), name=self._name)


class CheckpointVerifier:
    """Verifies checkpoints signed by one Ed25519 key under one signed-note key name.

    Raises ``ValueError`` if ``name`` is not a valid key name.
    """

    def __init__(self, public_key: Ed25519PublicKey, *, name: str) -> None:
        _check_name("key name", name)
        self._public_key = public_key
        self._name = name
        self._key_id = _key_id(name, public_key)

    @classmethod
    def from_public_key_pem(cls, pem: bytes, *, name: str) -> CheckpointVerifier:
        """Build a verifier from :meth:`CheckpointSigner.public_key_pem` output.

        Raises :class:`~audit.errors.SigningKeyError` if ``pem`` is not an Ed25519
        public key.
        """
        try:
            public_key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as e:
            raise SigningKeyError(f"not a readable PEM public key: {e}") from e
        if not isinstance(public_key, Ed25519PublicKey):
            raise SigningKeyError("the public key is not an Ed25519 key")
        return cls(public_key, name=name)

    def verify(self, note: bytes) -> Checkpoint:
        """Return the checkpoint in ``note`` once its signature by this key verifies.

        Signatures by other keys are ignored, as signed-note requires. Raises
        :class:`~audit.errors.ProofError` if the note is malformed, carries no signature
        by this key, carries a signature by this key that does not verify, or its text is
        not a canonical checkpoint.
        """
        text, signature_lines = _split_note(note)
        # SECURITY: the text is not looked at until a signature by the pinned key has
        # verified over its exact bytes.
        verified = False
        for line in signature_lines:
            name, key_id, signature = _parse_signature_line(line)
            if name != self._name or key_id != self._key_id:
                continue
            if len(signature) != _ED25519_SIGNATURE_SIZE:
                raise ProofError(f"signature by {name} has the wrong length")
            try:
                self._public_key.verify(signature, text)
            except InvalidSignature as e:
                raise ProofError(f"signature by {name} does not verify") from e
            verified = True
        if not verified:
            raise ProofError(f"the note carries no signature by key {self._name}")
        return _parse_checkpoint(text)


def _check_name(what: str, name: str) -> None:
    """Apply the signed-note key name rules (the checkpoint spec recommends them for origins).

    Raises ``ValueError``.
    """
    if not name:
        raise ValueError(f"{what} must not be empty")
    if not name.isprintable() or any(ch.isspace() or ch == "+" for ch in name):
        raise ValueError(f"{what} {name!r} must not contain spaces, '+' or control characters")


def _key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519_SIGNATURE_TYPE + raw)
    return digest.digest()[:_KEY_ID_SIZE]


def _format_timestamp(moment: datetime) -> str:
    # Written out field by field: strftime does not zero-pad years before 1000 everywhere.
    t = moment.astimezone(UTC)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += f".{t.microsecond:06d}"
    return text + "Z"


def _split_note(note: bytes) -> tuple[bytes, list[str]]:
    """Split a signed note into its text (with final newline) and its signature lines.

    Raises :class:`~audit.errors.ProofError` if the note is not a well-formed signed note.
    """
    if len(note) > _MAX_NOTE_BYTES:
        raise ProofError(f"note is larger than {_MAX_NOTE_BYTES} bytes")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProofError("note is not valid UTF-8") from e
    if any(ch < " " and ch != "\n" for ch in decoded):
        raise ProofError("note contains control characters")
    if not decoded.endswith("\n"):
        raise ProofError("note does not end with a newline")
    # The text ends at the last blank line; signature lines are never blank.
    split = decoded.rfind("\n\n")
    if split < 0:
        raise ProofError("note has no signature block")
    signatures = decoded[split + 2 :]
    if not signatures:
        raise ProofError("note has no signature lines")
    return decoded[: split + 1].encode("utf-8"), signatures[:-1].split("\n")


def _parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    """Return ``(key name, key ID, signature)`` from one ``— name base64`` line.

    Raises :class:`~audit.errors.ProofError` if the line is malformed.
    """
    if not line.startswith(_SIGNATURE_PREFIX):
        raise ProofError("malformed signature line in note")
    parts = line[len(_SIGNATURE_PREFIX) :].split(" ")
    if len(parts) != 2 or not parts[0]:
        raise ProofError("malformed signature line in note")
    name, encoded = parts
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error as e:
        raise ProofError(f"signature by {name} is not valid base64") from e
    if len(blob) <= _KEY_ID_SIZE:
        raise ProofError(f"signature by {name} is too short")
    return name, blob[:_KEY_ID_SIZE], blob[_KEY_ID_SIZE:]


def _parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse verified note text into a checkpoint.

    Raises :class:`~audit.errors.ProofError` unless ``text`` is exactly what
    :meth:`Checkpoint.body` writes, so each checkpoint has one signed form.
    """
    lines = text.decode("utf-8")[:-1].split("\n")
    if len(lines) != 4:
        raise ProofError(f"checkpoint has {len(lines)} lines, expected 4")
    origin, size_line, root_line, time_line = lines
    if not _TREE_SIZE.fullmatch(size_line):
        raise ProofError("checkpoint tree size is not a decimal number")
    try:
        root_hash = base64.b64decode(root_line, validate=True)
    except binascii.Error as e:
        raise ProofError("checkpoint root hash is not valid base64") from e
    if not time_line.startswith(_TIME_PREFIX):
        raise ProofError("checkpoint lacks its 'time' extension line")
    match = _TIMESTAMP.fullmatch(time_line[len(_TIME_PREFIX) :])
    if match is None:
        raise ProofError("checkpoint time is not an RFC 3339 UTC timestamp")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        timestamp = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(fraction or "0"),
            tzinfo=UTC,
        )
        checkpoint = Checkpoint(origin, int(size_line), root_hash, timestamp)
    except ValueError as e:
        raise ProofError(f"checkpoint is malformed: {e}") from e
    if checkpoint.body() != text:
        raise ProofError("checkpoint text is not in canonical form")
    return checkpoint


def _write_new_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, mode 0600, atomically; never replace a file.

    Raises :class:`~audit.errors.SigningKeyError`.
    """
    try:
        # mkstemp creates the file with mode 0600 before any byte is written.
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SigningKeyError(f"cannot create the key file: {e.strerror}", path=str(path)) from e
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # SECURITY: link() fails if the target exists, unlike rename(), so an existing
        # signing key is never replaced, even by a concurrent create.
        os.link(temporary, path)
    except FileExistsError as e:
        raise SigningKeyError(
            "the key file already exists; refusing to replace it", path=str(path)
        ) from e
    except OSError as e:
        raise SigningKeyError(f"cannot write the key file: {e.strerror}", path=str(path)) from e
    finally:
        os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_private_file(path: Path) -> bytes:
    """Read a private key file after checking, on the open file, that only its owner may use it.

    Raises :class:`~audit.errors.SigningKeyError` naming ``path``.
    """
    try:
        # O_NONBLOCK so that a FIFO planted at the path cannot hang the caller; it has no
        # effect on a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise SigningKeyError(f"cannot open the key file: {e.strerror}", path=str(path)) from e
    try:
        # fstat on the open file, so the mode checked is that of the bytes read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError("the key path is not a regular file", path=str(path))
        mode = stat.S_IMODE(info.st_mode)
        # SECURITY: a signing key that group or others can read (or replace) lets them
        # forge checkpoints, so any such access bit is refused.
        if mode & 0o077:
            raise SigningKeyError(
                f"the key file has mode {mode:04o}; it must not be accessible to group "
                "or others (chmod 600)",
                path=str(path),
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as e:
        raise SigningKeyError(f"cannot read the key file: {e.strerror}", path=str(path)) from e
    finally:
        os.close(fd)
