"""The one ingestion pipeline, and its inverse.

``Vault.store_file``: stream → size limit → spool → inspect → encrypt → put (→ SHA-256).
``Vault.open_file``: unwrap the data key → authenticate the whole object → decrypt stream.

The upload is spooled because inspection needs random access (pypdf seeks). The spool
stays in memory up to ``memory_spool_bytes`` and then moves to a temporary file that is
itself encrypted under a throwaway key, so plaintext never rests on the server's disk.
The spool never changes once written, so its SHA-256 is the digest of exactly the bytes
inspected and encrypted; one held in memory is hashed on another core while it is
inspected, encrypted and uploaded (the upload mostly waits for the network).
Any failure at any step leaves nothing in the object store: the object store's ``put``
is atomic, and a failure after it deletes the object again.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from storage.envelope import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    EncryptingReader,
    ObjectIdentity,
    decrypt,
    sealed_size,
)
from storage.errors import IntegrityError, UploadTooLarge
from storage.inspect import Inspection, LimitedReader, inspect, safe_filename
from storage.keyring import Keyring
from storage.objects import ObjectStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Spools read their source in pieces this large once they have spilled to disk (or have
# read more than they expected).
_COPY_CHUNK = 1024 * 1024
# Inspection reads a spilled spool at scattered offsets in small pieces (pypdf's tokens),
# so each refill decrypts a modest block.
_SPILL_READ_BUFFER = 64 * 1024
# Below this, hashing takes about as long as handing the work to another thread.
_HASH_ASIDE_BYTES = 256 * 1024


@dataclass(frozen=True)
class StoredFile:
    """What the metadata database must record to find, check and decrypt a stored file."""

    object_key: str
    filename: str
    mime_type: str
    page_count: int
    size: int
    stored_size: int
    sha256: str
    wrapped_dek: bytes
    key_id: str
    key_version: int
    format_version: int

    def __repr__(self) -> str:  # the wrapped key is not secret, but it is noise in logs
        return f"StoredFile(object_key={self.object_key!r}, size={self.size}, sha256={self.sha256})"


@dataclass(frozen=True)
class SealedRef:
    """Where a stored file is and the key columns needed to open it."""

    object_key: str
    identity: ObjectIdentity
    wrapped_dek: bytes
    key_id: str
    key_version: int


class Vault:
    """Stores files encrypted in an object store and opens them again.

    ``max_bytes`` is the upload limit, enforced while reading. Uploads up to
    ``memory_spool_bytes`` are spooled in memory (the default matches the size up to
    which the S3 store sends an object in one request, holding it in memory anyway);
    ``spool_dir`` holds the (encrypted) spill files of larger ones and defaults to the
    system temp dir.
    """

    def __init__(
        self,
        store: ObjectStore,
        keyring: Keyring,
        *,
        max_bytes: int,
        spool_dir: Path | None = None,
        memory_spool_bytes: int = 8 * 1024 * 1024,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.max_bytes = max_bytes
        self._spool_dir = spool_dir
        self._memory_spool_bytes = memory_spool_bytes
        self._segment_size = segment_size
        # One thread hashes spools while uploads wait for the network (_hash_aside).
        self._hasher: ThreadPoolExecutor | None = None
        self._hasher_lock = threading.Lock()

    def store_file(
        self, stream: BinaryIO | Spool, filename: str, identity: ObjectIdentity, object_key: str
    ) -> StoredFile:
        """Inspect, encrypt and store one upload under ``object_key``.

        ``stream`` is read through the size limit into a spool, unless it is a
        :class:`Spool` already (see :meth:`spool`), which is stored as it is.
        Raises UploadTooLarge (over ``max_bytes``, detected while streaming),
        ContentRejected (refused by inspection, or a bad filename), StorageUnavailable
        or StorageError from the object store. Nothing is stored when it raises.
        """
        if isinstance(stream, Spool):
            return self.store_spooled(stream, filename, identity, object_key)
        name = safe_filename(filename)
        with self.spool(stream) as spool:
            return self.store_spooled(spool, name, identity, object_key)

    def spool(self, stream: BinaryIO, *, size_hint: int | None = None) -> Spool:
        """Copy ``stream`` into a new :class:`Spool`, enforcing the size limit while reading.

        ``size_hint`` is how many bytes ``stream`` is expected to hold (see
        :class:`Spool`). Raises UploadTooLarge past ``max_bytes``; the caller closes the
        returned spool.
        """
        return Spool(
            LimitedReader(stream, self.max_bytes),
            memory_limit=self._memory_spool_bytes,
            directory=self._spool_dir,
            size_hint=size_hint,
        )

    def store_spooled(
        self, spool: Spool, filename: str, identity: ObjectIdentity, object_key: str
    ) -> StoredFile:
        """Inspect, encrypt and put a spooled upload; see ``store_file``."""
        name = safe_filename(filename)
        if spool.size > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        hashing = self._hash_aside(spool)
        try:
            return self._seal_and_put(spool, name, identity, object_key)
        finally:
            if hashing is not None:
                hashing.cancel()  # done by now, unless the upload failed before its end

    def _seal_and_put(
        self, spool: Spool, name: str, identity: ObjectIdentity, object_key: str
    ) -> StoredFile:
        with spool.open() as view:
            found: Inspection = inspect(view, name)
        context = identity.encode()
        data_key = self.keyring.generate_data_key(context)
        expected_size = sealed_size(spool.size, self._segment_size)
        with spool.open() as plaintext:
            # The spool's digest covers these bytes already: no second SHA-256 pass.
            reader = EncryptingReader(
                plaintext,
                data_key.plaintext,
                identity,
                data_key.key_id,
                data_key.key_version,
                segment_size=self._segment_size,
                hash_plaintext=False,
            )
            info = self.store.put(object_key, reader, expected_size)
        try:
            # SECURITY: the bytes encrypted must be exactly the bytes inspected and hashed.
            if (
                reader.plaintext_size != spool.size
                or found.size != spool.size
                or info.size != expected_size
            ):
                raise IntegrityError(
                    f"stored {info.size} bytes for {found.size} inspected, expected "
                    f"{expected_size}: the upload changed while it was being stored"
                )
        except BaseException:
            self.store.delete(object_key)
            raise
        return StoredFile(
            object_key=object_key,
            filename=name,
            mime_type=found.mime_type,
            page_count=found.page_count,
            size=spool.size,
            stored_size=info.size,
            sha256=spool.sha256,  # waits for the digest begun aside, if it is under way
            wrapped_dek=data_key.wrapped,
            key_id=data_key.key_id,
            key_version=data_key.key_version,
            format_version=FORMAT_VERSION,
        )

    def _hash_aside(self, spool: Spool) -> Future[str] | None:
        """Start hashing a large spool held in memory on this vault's hashing thread.

        hashlib releases the GIL while it hashes, so the digest is computed on another
        core while this thread inspects, encrypts and, above all, waits for the object
        store. Whichever thread asks for the digest first computes it (see
        :attr:`Spool.sha256`), so the caller never waits for the queue.
        """
        if spool.sha256_known or spool.size < _HASH_ASIDE_BYTES:
            return None
        with self._hasher_lock:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(1, thread_name_prefix="vault-sha256")
                # The idle thread ends with the vault.
                weakref.finalize(self, self._hasher.shutdown, wait=False)
            return self._hasher.submit(lambda: spool.sha256)

    def open_file(self, ref: SealedRef) -> Iterator[bytes]:
        """Authenticate the whole object, then return an iterator over its plaintext.

        Raises KeyringError (key version retired or unknown), IntegrityError (tampered,
        truncated, wrong key or identity), ObjectNotFound or StorageUnavailable before
        any plaintext is returned.
        """
        context = ref.identity.encode()
        dek = self.keyring.unwrap(ref.wrapped_dek, ref.key_id, ref.key_version, context)
        return decrypt(lambda: self.store.open(ref.object_key), dek, ref.identity)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Spool:
    """A private copy of one upload that can be read at any offset, any number of times.

    The copy is made once, from ``source``, when the spool is created, and never
    changes afterwards, so ``size`` and ``sha256`` (hex) describe exactly what every
    :meth:`open` reads. It stays in memory up to ``memory_limit`` bytes and then moves
    to a temporary file in ``directory``, encrypted with AES-256-CTR under a random key
    that lives only in this object and unlinked on creation: plaintext never rests on
    disk and no file outlives the process. CTR allows reading at any offset, which
    inspection needs. ``size_hint``, the size ``source`` is expected to have, only
    shapes the reads: a document that fits in memory is asked for whole, and then
    usually arrives in one piece of its own size, which becomes the spool's bytes
    without another copy or a larger buffer. Exceptions of ``source``
    (UploadTooLarge from a size limit) and OSError from the temporary file propagate,
    and nothing is left behind. Close it (or use it as a context manager) when done.
    """

    def __init__(
        self,
        source: _Readable,
        *,
        memory_limit: int,
        directory: Path | None,
        size_hint: int | None = None,
    ) -> None:
        self._memory_limit = memory_limit
        self._directory = directory
        # While in memory, all that is expected is asked for, and a byte more to see the end.
        self._expected = memory_limit if size_hint is None else min(size_hint, memory_limit)
        # The pieces read so far while in memory (joined once at the end), else None.
        self._memory: list[bytes] | None = []
        self._data = b""
        self._file: BinaryIO | None = None
        self._closed = False
        self._key = os.urandom(32)
        self._nonce = os.urandom(8)
        # Once spilled, the digest is taken on the way to disk (reading the file back
        # would cost a decryption); a copy in memory is hashed in one go when first asked.
        self._spill_digest = hashlib.sha256()
        self._sha256: str | None = None
        self._sha256_lock = threading.Lock()
        size = 0
        try:
            while chunk := source.read(self._read_size(size)):
                self._append(size, chunk)
                size += len(chunk)
        except BaseException:
            self.close()
            raise
        if self._memory is not None:
            self._data = b"".join(self._memory)
            self._memory = None
        else:
            self._sha256 = self._spill_digest.hexdigest()
        self.size = size

    @property
    def sha256(self) -> str:
        """The SHA-256 (hex) of the copy, computed on first use from any thread (a
        concurrent first use waits for it); ``ValueError`` if first used once closed."""
        with self._sha256_lock:
            if self._sha256 is None:
                if self._closed:
                    raise ValueError("the spool is closed")
                self._sha256 = hashlib.sha256(self._data).hexdigest()
            return self._sha256

    @property
    def sha256_known(self) -> bool:
        """Whether :attr:`sha256` is computed already, so reading it costs nothing."""
        return self._sha256 is not None

    def open(self) -> BinaryIO:
        """A new read-only, seekable view of the whole copy, positioned at 0.

        Views are independent of each other and valid until the spool is closed;
        ``ValueError`` once it is.
        """
        if self._closed:
            raise ValueError("the spool is closed")
        if self._file is None:
            # BytesIO shares the bytes object until written to, so a view costs no copy
            # and cannot change the spool.
            return io.BytesIO(self._data)
        raw = _SpillReader(self._file, self.size, self._crypt)
        return io.BufferedReader(raw, buffer_size=_SPILL_READ_BUFFER)

    def close(self) -> None:
        """Drop the copy; the temporary file, if any, is closed and so disappears."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = None
        self._data = b""

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _read_size(self, size: int) -> int:
        """How much to ask the source for next, having read ``size`` bytes."""
        remaining = self._expected + 1 - size
        if self._memory is not None and remaining > 0:
            return remaining
        return _COPY_CHUNK

    def _append(self, offset: int, chunk: bytes) -> None:
        if self._memory is not None and offset + len(chunk) > self._memory_limit:
            # An unbuffered file: every write goes to the operating system at once,
            # where the readers' positional reads see it.
            self._file = tempfile.TemporaryFile(dir=self._directory, buffering=0)  # noqa: SIM115
            start = 0
            for piece in self._memory:
                self._spill(start, piece)
                start += len(piece)
            self._memory = None
        if self._memory is not None:
            self._memory.append(chunk)
        else:
            self._spill(offset, chunk)

    def _spill(self, offset: int, data: bytes) -> None:
        """Hash ``data`` and write it, encrypted, at ``offset`` of the spill file.

        A piece read while the spool was in memory can be as large as the memory limit;
        it is encrypted and written a megabyte at a time, so its ciphertext never takes
        as much memory again.
        """
        assert self._file is not None
        self._spill_digest.update(data)
        with memoryview(data) as view:
            for start in range(0, len(view), _COPY_CHUNK):
                self._file.write(self._crypt(offset + start, view[start : start + _COPY_CHUNK]))

    def _crypt(self, offset: int, data: bytes | memoryview) -> bytes:
        """AES-CTR at byte ``offset``: the counter block is nonce ‖ (offset // 16)."""
        block, skip = divmod(offset, 16)
        counter = self._nonce + block.to_bytes(8, "big")
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        if not skip:
            return encryptor.update(data)
        return encryptor.update(bytes(skip) + data)[skip:]


class _SpillReader(io.RawIOBase):
    """A read-only, seekable view of a spool's encrypted file, decrypting as it reads.

    Positional reads (``os.pread``) keep every view's position its own. Reading after
    the spool closed its file raises ``ValueError``.
    """

    def __init__(self, file: BinaryIO, size: int, crypt: Callable[[int, bytes], bytes]) -> None:
        super().__init__()
        self._file = file
        self._size = size
        self._crypt = crypt
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            count = max(0, min(len(target), self._size - self._position))
            if not count:
                return 0
            data = self._crypt(self._position, os.pread(self._file.fileno(), count, self._position))
            target[: len(data)] = data
            self._position += len(data)
            return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position
