"""The keyring: versioned key-encryption keys (KEKs) that wrap the per-object data keys.

The embedded keyring is one JSON file (``DATA_DIR/keys/keyring.json``), mode 0600, rewritten
atomically (temp file, fsync, ``os.replace``) under an advisory lock, with a generation
counter so that two processes cannot silently overwrite each other's rotation.

A DEK is wrapped with AES-256-GCM under the active KEK version; the AAD binds the key id, the
key version and a caller context (the object identity), so a wrapped DEK copied to another
row, object or version fails to unwrap. Rotation adds a version; ``rewrap`` moves DEKs to it;
``retire_below`` sets the minimum decryption version; ``destroy_retired`` erases retired KEKs
from the file, which shreds every DEK still wrapped only under them.

Several processes share the file (gunicorn workers, the ``satchel keys`` command line), so a
``Keyring`` never trusts its copy blindly: before every operation that uses key material or
reports state (``generate_data_key``, ``unwrap``, ``rewrap``, ``key_id``, ``active_version``,
``status`` and the changes themselves) it compares one ``os.stat`` of the file with the stamp
(device, inode, mode, size, mtime, ctime) of the copy it read, and re-reads, re-parses and
re-validates the file when they differ. A rotation, retirement or destruction made by another
process therefore takes effect in this one at its next operation, with no restart. A missing,
unreadable, unsafe or invalid file at that point raises ``KeyringError`` and leaves the last
valid state in memory but unused: every operation keeps raising until the file is good again.
Writers replace the file (new inode) so the stamp always changes; an in-place edit by hand that
keeps size and mode within one filesystem clock tick could go unnoticed until the next change.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.envelope import DEK_SIZE, KEY_ID_PATTERN, MAX_KEY_VERSION, check_key_id
from storage.errors import IntegrityError, KeyringError, KeyVersionRetired

KEK_SIZE = 32
WRAP_FORMAT = 1
WRAP_NONCE_SIZE = 12
WRAPPED_SIZE = 1 + WRAP_NONCE_SIZE + DEK_SIZE + 16
_FILE_FORMAT = 1
# A keyring file is a few hundred bytes per version; refuse to parse anything absurd.
_MAX_FILE_SIZE = 1024 * 1024
_WRAP_LABEL = b"satchel.keyring.wrap"

_T = TypeVar("_T")

# What tells one version of the keyring file from another without reading it.
_Stamp = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class DataKey:
    """A fresh or rewrapped data key. ``plaintext`` never appears in ``repr``."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class KeyVersionInfo:
    """What ``status`` reports about one KEK version; never the key material."""

    key_id: str
    version: int
    created_at: datetime
    active: bool
    retired: bool
    destroyed: bool = False


@dataclass(frozen=True)
class _KeyVersion:
    version: int
    created_at: datetime
    material: bytes | None = field(repr=False)  # None once destroyed


@dataclass(frozen=True)
class _State:
    key_id: str
    active_version: int
    min_decryption_version: int
    generation: int
    versions: tuple[_KeyVersion, ...]

    def to_json(self) -> bytes:
        document = {
            "format": _FILE_FORMAT,
            "key_id": self.key_id,
            "active_version": self.active_version,
            "min_decryption_version": self.min_decryption_version,
            "generation": self.generation,
            "versions": [
                {
                    "version": v.version,
                    "created_at": v.created_at.isoformat(),
                    "key": None
                    if v.material is None
                    else base64.b64encode(v.material).decode("ascii"),
                }
                for v in self.versions
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return now


def _parse_state(path: Path, raw: bytes) -> _State:
    """The keyring state in ``raw``; KeyringError naming ``path`` if it is malformed."""
    try:
        document = json.loads(raw)
        if document["format"] != _FILE_FORMAT:
            raise KeyringError(f"keyring {path} has unsupported format {document['format']!r}")
        versions = tuple(_parse_version(entry) for entry in document["versions"])
        state = _State(
            key_id=_typed(document["key_id"], str),
            active_version=_typed(document["active_version"], int),
            min_decryption_version=_typed(document["min_decryption_version"], int),
            generation=_typed(document["generation"], int),
            versions=versions,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise KeyringError(f"keyring {path} is malformed: {error}") from None
    problem = _state_problem(state)
    if problem:
        raise KeyringError(f"keyring {path} is inconsistent: {problem}")
    return state


def _typed(value: object, kind: type[_T]) -> _T:
    # bool is an int in Python; a flag where a number belongs is still malformed.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def _parse_version(entry: dict[str, Any]) -> _KeyVersion:
    key = entry["key"]
    material = None if key is None else base64.b64decode(_typed(key, str), validate=True)
    return _KeyVersion(
        version=_typed(entry["version"], int),
        created_at=_aware(datetime.fromisoformat(_typed(entry["created_at"], str))),
        material=material,
    )


def _state_problem(state: _State) -> str | None:
    numbers = [v.version for v in state.versions]
    if not KEY_ID_PATTERN.fullmatch(state.key_id):
        return f"key id {state.key_id!r} is invalid"
    if numbers != list(range(1, len(numbers) + 1)):
        return "versions must be numbered 1, 2, 3, ..."
    if not 1 <= state.min_decryption_version <= state.active_version <= len(numbers):
        return "active and minimum decryption versions are out of range"
    for v in state.versions:
        if v.material is not None and len(v.material) != KEK_SIZE:
            return f"version {v.version} key is not {KEK_SIZE} bytes"
        # SECURITY: only retired versions may have lost their material (destroy_retired).
        if v.material is None and v.version >= state.min_decryption_version:
            return f"version {v.version} is usable but has no key material"
    if state.generation < 1:
        return "generation must be positive"
    return None


def _stamp(info: os.stat_result) -> _Stamp:
    # Writers replace the file, so the inode changes; mode is here so that a chmod is
    # noticed (and re-checked) even within one timestamp tick.
    return (
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )


def _read_file(path: Path) -> tuple[bytes, _Stamp]:
    """The keyring file's bytes after checking, on the open descriptor, that it is private,
    and the stamp of the file those bytes were read from (taken from that descriptor, so a
    replacement racing the read shows up as a changed stamp later, never as a missed one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyringError(f"no keyring at {path} (run `satchel init`)") from None
    except OSError as error:
        raise KeyringError(f"keyring {path} cannot be opened: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"keyring {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        # SECURITY: KEKs readable or writable by anyone but the owner are refused outright.
        if mode & 0o077:
            raise KeyringError(
                f"keyring {path} has mode {mode:04o}; it must not be readable or writable "
                "by group or others (chmod 600)"
            )
        raw = file.read(_MAX_FILE_SIZE + 1)
    if len(raw) > _MAX_FILE_SIZE:
        raise KeyringError(f"keyring {path} is larger than {_MAX_FILE_SIZE} bytes")
    return raw, _stamp(info)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, state: _State, *, exclusive: bool) -> None:
    """Write ``state`` to a private temp file, fsync it, then move it into place.

    ``exclusive`` links instead of replacing, so creating never clobbers an existing file.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        # mkstemp creates the file with mode 0600, before any key byte is written.
        with os.fdopen(fd, "wb") as file:
            file.write(state.to_json())
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``'s lock file (serialises writers)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wrap_aad(key_id: str, key_version: int, context: bytes) -> bytes:
    key_id_bytes = key_id.encode("ascii")
    return (
        _WRAP_LABEL
        + b"\x00"
        + bytes([WRAP_FORMAT])
        + struct.pack(">H", len(key_id_bytes))
        + key_id_bytes
        + struct.pack(">II", key_version, len(context))
        + context
    )


class Keyring:
    """Versioned KEKs in one private JSON file; wraps, unwraps and rewraps data keys.

    Safe to share between threads. Every public operation first makes sure it works from
    the file as it is now (see the module docstring), so each one may also raise the
    ``KeyringError`` that :meth:`load` raises for a missing, unsafe or malformed file.
    """

    def __init__(
        self,
        path: Path,
        state: _State,
        random: Callable[[int], bytes],
        stamp: _Stamp | None = None,
    ) -> None:
        self._path = path
        self._random = random
        # The last valid state and the stamp of the file it was read from (None: not known,
        # so the next operation re-reads). One attribute, so that a thread never pairs one
        # reload's state with another's stamp.
        self._loaded: tuple[_State, _Stamp | None] = (state, stamp)
        self._reload_lock = threading.Lock()

    def __repr__(self) -> str:
        # The last state read, without touching the file: repr must never raise.
        state = self._loaded[0]
        return (
            f"Keyring(path={str(self._path)!r}, key_id={state.key_id!r}, "
            f"active_version={state.active_version})"
        )

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        now: datetime,
        key_id: str = "kek",
        random: Callable[[int], bytes] = os.urandom,
    ) -> Keyring:
        """Create a keyring with one active version at ``path`` (directories 0700).

        Raises KeyringError if a file already exists there; ``ValueError`` for an invalid
        key id or a naive ``now``.
        """
        check_key_id(key_id)
        material = cls._fresh(random, KEK_SIZE)
        state = _State(
            key_id=key_id,
            active_version=1,
            min_decryption_version=1,
            generation=1,
            versions=(_KeyVersion(1, _aware(now), material),),
        )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_atomically(path, state, exclusive=True)
        except FileExistsError:
            raise KeyringError(f"a keyring already exists at {path}") from None
        return cls(path, state, random)

    @classmethod
    def load(cls, path: Path, *, random: Callable[[int], bytes] = os.urandom) -> Keyring:
        """Load the keyring at ``path``.

        Raises KeyringError (naming the path) if it is missing, not a regular file,
        group- or world-readable or -writable, or malformed.
        """
        raw, stamp = _read_file(path)
        return cls(path, _parse_state(path, raw), random, stamp)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def key_id(self) -> str:
        return self._current().key_id

    @property
    def active_version(self) -> int:
        return self._current().active_version

    def _current(self) -> _State:
        """The validated state of the file as it is now; re-read only if the file changed.

        Raises KeyringError if the file changed and is now missing, unsafe or invalid.
        """
        state, stamp = self._loaded
        try:
            unchanged = stamp is not None and _stamp(os.stat(self._path)) == stamp
        except OSError:
            unchanged = False  # _reload names the problem
        # SECURITY: another process may have rotated, retired or destroyed versions; key
        # material is only used from the file as it is now.
        return state if unchanged else self._reload()

    def _reload(self) -> _State:
        with self._reload_lock:
            state, stamp = self._loaded
            try:
                now = _stamp(os.stat(self._path))
            except FileNotFoundError:
                raise KeyringError(
                    f"keyring {self._path} has disappeared since it was loaded; "
                    "restore the key files"
                ) from None
            except OSError as error:
                raise KeyringError(
                    f"keyring {self._path} cannot be checked: {error.strerror}"
                ) from None
            if now == stamp:
                return state  # another thread re-read it meanwhile
            raw, stamp = _read_file(self._path)
            # SECURITY: memory only ever changes to a state that passed every check; when
            # parsing fails the old state stays, unused, and the next operation retries.
            fresh = _parse_state(self._path, raw)
            self._loaded = (fresh, stamp)
            return fresh

    @staticmethod
    def _fresh(random: Callable[[int], bytes], size: int) -> bytes:
        value = random(size)
        if len(value) != size:
            raise ValueError("random returned the wrong number of bytes")
        return value

    def _material(self, state: _State, key_id: str, key_version: int) -> bytes:
        """The KEK of a version that may still decrypt; KeyringError otherwise."""
        if key_id != state.key_id:
            raise KeyringError(f"keyring {self._path} has no key {key_id!r}")
        if not 1 <= key_version <= len(state.versions):
            raise KeyringError(f"keyring {self._path} has no version {key_version} of {key_id!r}")
        # SECURITY: versions below the minimum decryption version are unusable even while
        # their material is still in the file.
        if key_version < state.min_decryption_version:
            raise KeyVersionRetired(f"version {key_version} of {key_id!r} is retired")
        material = state.versions[key_version - 1].material
        if material is None:  # _state_problem rules this out; the check narrows the type
            raise KeyVersionRetired(f"version {key_version} of {key_id!r} was destroyed")
        return material

    def _wrap(self, state: _State, dek: bytes, context: bytes) -> DataKey:
        version = state.active_version
        material = self._material(state, state.key_id, version)
        nonce = self._fresh(self._random, WRAP_NONCE_SIZE)
        sealed = AESGCM(material).encrypt(nonce, dek, _wrap_aad(state.key_id, version, context))
        return DataKey(
            plaintext=dek,
            wrapped=bytes([WRAP_FORMAT]) + nonce + sealed,
            key_id=state.key_id,
            key_version=version,
        )

    def _unwrap(
        self, state: _State, wrapped: bytes, key_id: str, key_version: int, context: bytes
    ) -> bytes:
        material = self._material(state, key_id, key_version)
        if len(wrapped) != WRAPPED_SIZE or wrapped[0] != WRAP_FORMAT:
            raise IntegrityError("wrapped data key is malformed")
        nonce = wrapped[1 : 1 + WRAP_NONCE_SIZE]
        try:
            return AESGCM(material).decrypt(
                nonce, wrapped[1 + WRAP_NONCE_SIZE :], _wrap_aad(key_id, key_version, context)
            )
        except InvalidTag:
            raise IntegrityError("wrapped data key failed authentication") from None

    def generate_data_key(self, context: bytes) -> DataKey:
        """A fresh 32-byte DEK wrapped by the active version, bound to ``context``."""
        return self._wrap(self._current(), self._fresh(self._random, DEK_SIZE), context)

    def unwrap(self, wrapped: bytes, key_id: str, key_version: int, context: bytes) -> bytes:
        """The DEK inside ``wrapped``.

        Raises KeyringError if the key id or version is unknown, KeyVersionRetired if the
        version is retired or destroyed; IntegrityError if ``wrapped`` is malformed,
        tampered, or was wrapped under another version or ``context``.
        """
        return self._unwrap(self._current(), wrapped, key_id, key_version, context)

    def require_usable(self, key_id: str, key_version: int) -> None:
        """Check, against the file as it is now, that the version may still unwrap.

        Raises KeyVersionRetired (retired or destroyed), or KeyringError (unknown, or the
        file is no longer usable).
        """
        self._material(self._current(), key_id, key_version)

    def rewrap(self, wrapped: bytes, key_id: str, key_version: int, context: bytes) -> DataKey:
        """Unwrap (same errors as :meth:`unwrap`) and wrap again under the active version."""
        state = self._current()  # one state for both halves
        return self._wrap(
            state, self._unwrap(state, wrapped, key_id, key_version, context), context
        )

    def _commit(self, base: _State, state: _State) -> None:
        """Persist ``state``, computed from ``base``, as generation ``base`` + 1 and adopt it;
        memory changes only on success.

        Raises KeyringError if the file no longer holds ``base`` (another process changed it
        after this one read it), so that no change silently undoes another.
        """
        with _locked(self._path):
            raw, _ = _read_file(self._path)
            on_disk = _parse_state(self._path, raw)
            # Compared with the base the change was computed from, not with whatever this
            # object holds now: another thread may have re-read the file in between.
            if on_disk.generation != base.generation:
                raise KeyringError(
                    f"keyring {self._path} was changed by another process during this "
                    "change; try again"
                )
            new_state = replace(state, generation=base.generation + 1)
            _write_atomically(self._path, new_state, exclusive=False)
        # No stamp: the next operation re-reads the file once (cheap, and never pairs this
        # state with a file some other writer put there after the lock was released).
        self._loaded = (new_state, None)

    def rotate(self, *, now: datetime) -> KeyVersionInfo:
        """Add a new version, make it active and persist. Older versions still decrypt."""
        base = self._current()
        version = len(base.versions) + 1
        if version > MAX_KEY_VERSION:
            raise KeyringError(f"keyring {self._path} has run out of key versions")
        entry = _KeyVersion(version, _aware(now), self._fresh(self._random, KEK_SIZE))
        new_state = replace(base, active_version=version, versions=(*base.versions, entry))
        self._commit(base, new_state)
        return self._info(new_state, entry)

    def retire_below(self, min_version: int) -> None:
        """Make versions below ``min_version`` unusable for decryption, and persist.

        Raises KeyringError if that would retire the active version, or would lower the
        minimum (retirement is one-way).
        """
        base = self._current()
        if min_version > base.active_version:
            raise KeyringError(
                f"cannot retire the active version {base.active_version}; rotate first"
            )
        if min_version < base.min_decryption_version:
            raise KeyringError(
                f"versions below {base.min_decryption_version} are already retired; "
                "retirement cannot be undone"
            )
        if min_version != base.min_decryption_version:
            self._commit(base, replace(base, min_decryption_version=min_version))

    def destroy_retired(self, versions: Collection[int] | None = None) -> list[int]:
        """Erase the material of every retired version from the file (only of those in
        ``versions``, when given); return the versions erased.

        Irreversible: every DEK still wrapped only under those versions is unrecoverable.
        ``versions`` lets a caller that checked which versions are retired erase exactly
        those, even if another process retires more in the meantime; a listed version that
        is not retired is left alone.
        """
        base = self._current()
        doomed = [
            v.version
            for v in base.versions
            if v.version < base.min_decryption_version
            and v.material is not None
            and (versions is None or v.version in versions)
        ]
        if doomed:
            erased = tuple(
                replace(v, material=None) if v.version in doomed else v for v in base.versions
            )
            self._commit(base, replace(base, versions=erased))
        return doomed

    def _info(self, state: _State, entry: _KeyVersion) -> KeyVersionInfo:
        return KeyVersionInfo(
            key_id=state.key_id,
            version=entry.version,
            created_at=entry.created_at,
            active=entry.version == state.active_version,
            retired=entry.version < state.min_decryption_version,
            destroyed=entry.material is None,
        )

    def status(self) -> list[KeyVersionInfo]:
        """Every version, oldest first."""
        state = self._current()
        return [self._info(state, v) for v in state.versions]
