"""The one ingestion pipeline, and its inverse.

``Vault.store_file``: stream → size limit → spool → inspect → encrypt → put (→ SHA-256).
``Vault.open_file``: unwrap the data key → authenticate the whole object → decrypt stream.

The upload is spooled because inspection needs random access (pypdf seeks). The spool
stays in memory up to ``memory_spool_bytes`` and then moves to a temporary file that is
itself encrypted under a throwaway key, so plaintext never rests on the server's disk.
A parser that pushes an upload rather than being read from (the web's multipart form
parser) fills a spool through a :class:`SpoolWriter`, or a :class:`SpoolFile` when it
wants a file object. A spool directory that is missing, full or failing is a
:class:`SpoolUnavailable` (a StorageUnavailable), never a bare OSError.
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
from dataclasses import dataclass, replace
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
from storage.errors import (
    IntegrityError,
    SpoolUnavailable,
    StorageError,
    UploadTooLarge,
)
from storage.inspect import Inspection, LimitedReader, inspect, safe_filename
from storage.keyring import Keyring
from storage.objects import ObjectStore

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

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

    @property
    def memory_spool_bytes(self) -> int:
        """How much of one upload a spool holds in memory before it spills to disk."""
        return self._memory_spool_bytes

    def spool_writer(self, *, memory_limit: int | None = None) -> SpoolWriter:
        """A new :class:`SpoolWriter` under this vault's size limit and spool directory.

        It holds at most ``memory_limit`` bytes in memory (never more than
        :attr:`memory_spool_bytes`) before it spills. The caller seals or discards it.
        """
        limit = self._memory_spool_bytes
        if memory_limit is not None:
            limit = max(0, min(memory_limit, limit))
        return SpoolWriter(memory_limit=limit, directory=self._spool_dir, max_bytes=self.max_bytes)

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

    def under_active_key(self, stored: StoredFile, identity: ObjectIdentity) -> StoredFile:
        """``stored`` with its data key wrapped under the keyring's active version: the
        same unless the keyring was rotated while the file was sealed and stored.

        Raises KeyVersionRetired if the file's version was retired meanwhile (its data
        key can no longer be unwrapped, so the file cannot be recorded), KeyringError.
        """
        if stored.key_version == self.keyring.active_version:
            return stored
        fresh = self.keyring.rewrap(
            stored.wrapped_dek, stored.key_id, stored.key_version, identity.encode()
        )
        return replace(
            stored, wrapped_dek=fresh.wrapped, key_id=fresh.key_id, key_version=fresh.key_version
        )

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


class SpoolWriter:
    """A :class:`Spool` being filled: bytes are pushed in with :meth:`write`, and
    :meth:`seal` turns what was written into the spool.

    For a source that pushes (a multipart form parser) rather than being read; a spool
    made from a readable source is filled through one too. What is written stays in
    memory up to ``memory_limit`` bytes and then moves, encrypted, to a temporary file
    in ``directory`` (see :class:`Spool`). ``write`` raises UploadTooLarge once more than
    ``max_bytes`` (when given) would have been written, and SpoolUnavailable when the
    operating system refuses the spill file or a write to it; either way the writer has
    dropped all it held and takes nothing more. Seal it, or discard it.
    """

    def __init__(
        self, *, memory_limit: int, directory: Path | None, max_bytes: int | None = None
    ) -> None:
        self._memory_limit = memory_limit
        self._directory = directory
        self._max_bytes = max_bytes
        # The pieces written so far while in memory (joined once when sealed), else None.
        self._memory: list[bytes] | None = []
        self._file: BinaryIO | None = None
        self._done = False
        self._key = os.urandom(32)
        self._nonce = os.urandom(8)
        # Once spilled, the digest is taken on the way to disk (reading the file back
        # would cost a decryption); a copy in memory is hashed in one go when first asked.
        self._spill_digest = hashlib.sha256()
        self.size = 0

    @property
    def in_memory(self) -> bool:
        """Whether all that was written is held in memory (nothing has spilled)."""
        return self._memory is not None

    def write(self, data: ReadableBuffer) -> int:
        """Add ``data`` at the end; returns its length. Raises UploadTooLarge,
        SpoolUnavailable, or ValueError once sealed or discarded."""
        if self._done:
            raise ValueError("the spool writer is sealed or discarded")
        chunk = data if isinstance(data, bytes) else bytes(data)
        if self._max_bytes is not None and self.size + len(chunk) > self._max_bytes:
            # Nothing past the limit is kept, in memory or on disk.
            self.discard()
            raise UploadTooLarge(self._max_bytes)
        self._append(self.size, chunk)
        self.size += len(chunk)
        return len(chunk)

    def seal(self) -> Spool:
        """The spool of everything written; the writer is done. ValueError if it was
        sealed or discarded already."""
        return Spool._of(self)

    def discard(self) -> None:
        """Drop what was written (the spill file, if any, disappears); idempotent."""
        self._done = True
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _take(self) -> tuple[bytes, BinaryIO | None, str | None]:
        """Hand over the bytes held in memory, the spill file and its digest; done."""
        if self._done:
            raise ValueError("the spool writer is sealed or discarded")
        self._done = True
        data = b"".join(self._memory) if self._memory is not None else b""
        file, self._file, self._memory = self._file, None, None
        return data, file, None if file is None else self._spill_digest.hexdigest()

    def _append(self, offset: int, chunk: bytes) -> None:
        if self._memory is not None and offset + len(chunk) > self._memory_limit:
            # An unbuffered file: every write goes to the operating system at once,
            # where the readers' positional reads see it.
            try:
                self._file = tempfile.TemporaryFile(dir=self._directory, buffering=0)  # noqa: SIM115
            except OSError as e:
                raise self._failed("cannot create a spill file", e) from e
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

        A piece written while the spool was in memory can be as large as the memory
        limit; it is encrypted and written a megabyte at a time, so its ciphertext never
        takes as much memory again.
        """
        self._spill_digest.update(data)
        with memoryview(data) as view:
            for start in range(0, len(view), _COPY_CHUNK):
                piece = view[start : start + _COPY_CHUNK]
                self._write_all(_ctr(self._key, self._nonce, offset + start, piece))

    def _write_all(self, data: bytes) -> None:
        """Write all of ``data`` to the spill file: an unbuffered write may take only part
        of it (a filling disk takes what fits and refuses the rest on the next call)."""
        assert self._file is not None
        done = 0
        while done < len(data):
            try:
                written = self._file.write(data[done:] if done else data)
            except OSError as e:
                raise self._failed("cannot write to its spill file", e) from e
            done += written

    def _failed(self, action: str, error: OSError) -> SpoolUnavailable:
        self.discard()
        return SpoolUnavailable(self._directory, action, error)


class Spool:
    """A private copy of one upload that can be read at any offset, any number of times.

    The copy is made once, from ``source``, when the spool is created (or by a
    :class:`SpoolWriter`), and never changes afterwards, so ``size`` and ``sha256``
    (hex) describe exactly what every :meth:`open` reads. It stays in memory up to
    ``memory_limit`` bytes and then moves to a temporary file in ``directory``,
    encrypted with AES-256-CTR under a random key that lives only in this object and
    unlinked on creation: plaintext never rests on disk and no file outlives the
    process. CTR allows reading at any offset, which inspection needs. ``size_hint``,
    the size ``source`` is expected to have, only shapes the reads: a document that
    fits in memory is asked for whole, and then usually arrives in one piece of its own
    size, which becomes the spool's bytes without another copy or a larger buffer.
    Exceptions of ``source`` (UploadTooLarge from a size limit) propagate, an OSError of
    the temporary file becomes SpoolUnavailable, and nothing is left behind. Close it
    (or use it as a context manager) when done.
    """

    size: int
    _data: bytes
    _file: BinaryIO | None
    _key: bytes
    _nonce: bytes
    _closed: bool
    _sha256: str | None
    _sha256_lock: threading.Lock

    def __init__(
        self,
        source: _Readable,
        *,
        memory_limit: int,
        directory: Path | None,
        size_hint: int | None = None,
    ) -> None:
        writer = SpoolWriter(memory_limit=memory_limit, directory=directory)
        # While in memory, all that is expected is asked for, and a byte more to see the end.
        expected = memory_limit if size_hint is None else min(size_hint, memory_limit)
        try:
            while chunk := source.read(_read_size(writer, expected)):
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        self._adopt(writer)

    @classmethod
    def _of(cls, writer: SpoolWriter) -> Spool:
        """The spool of what ``writer`` holds (see :meth:`SpoolWriter.seal`)."""
        spool = cls.__new__(cls)
        spool._adopt(writer)
        return spool

    def _adopt(self, writer: SpoolWriter) -> None:
        self._data, self._file, self._sha256 = writer._take()
        self._key = writer._key
        self._nonce = writer._nonce
        self._closed = False
        self._sha256_lock = threading.Lock()
        self.size = writer.size

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

    @property
    def in_memory(self) -> bool:
        """Whether the copy is held in memory (it did not spill to disk)."""
        return self._file is None and not self._closed

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

    def _crypt(self, offset: int, data: bytes | memoryview) -> bytes:
        return _ctr(self._key, self._nonce, offset, data)


def _read_size(writer: SpoolWriter, expected: int) -> int:
    """How much to ask a source for next, expecting ``expected`` bytes in all."""
    remaining = expected + 1 - writer.size
    if writer.in_memory and remaining > 0:
        return remaining
    return _COPY_CHUNK


def _ctr(key: bytes, nonce: bytes, offset: int, data: bytes | memoryview) -> bytes:
    """AES-CTR at byte ``offset``: the counter block is nonce ‖ (offset // 16)."""
    block, skip = divmod(offset, 16)
    counter = nonce + block.to_bytes(8, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    if not skip:
        return encryptor.update(data)
    return encryptor.update(bytes(skip) + data)[skip:]


class SpoolFile(io.RawIOBase):
    """The file a parser writes one upload into and then reads back, holding it in a
    :class:`Spool` meanwhile: what a multipart form parser asks for, one per file.

    What is written goes to ``writer``; the first seek or read seals it into a spool,
    which later reads come from, and :meth:`spool` hands it over for storing. Closing
    the file closes the spool.

    An error while writing (UploadTooLarge, SpoolUnavailable) is not raised to the
    parser, which would fail the whole request without saying which file it was: the
    file drops what it held, ignores the rest of the upload and rewinds without
    complaint, and :meth:`spool` (or a read) raises the error, so that a caller storing
    several files reports it for this one.
    """

    def __init__(self, writer: SpoolWriter) -> None:
        super().__init__()
        self._writer: SpoolWriter | None = writer
        self._spool: Spool | None = None
        self._view: BinaryIO | None = None
        self._error: StorageError | None = None

    @property
    def memory_bytes(self) -> int:
        """How many bytes of the upload this file holds in memory."""
        if self._writer is not None:
            return self._writer.size if self._writer.in_memory else 0
        if self._spool is not None and self._spool.in_memory:
            return self._spool.size
        return 0

    def spool(self) -> Spool:
        """The spool of the upload (sealed now if it was still being written).

        Raises the error that stopped the writing (UploadTooLarge, SpoolUnavailable),
        or ValueError once closed. The spool stays this file's: closing it closes both.
        """
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._error is not None:
            raise self._error
        if self._spool is None:
            assert self._writer is not None
            self._spool, self._writer = self._writer.seal(), None
        return self._spool

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._spool is None

    def seekable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        chunk = data if isinstance(data, bytes) else bytes(data)
        if self._spool is not None or self.closed:
            raise ValueError("the upload was written already")
        if self._writer is not None:
            try:
                self._writer.write(chunk)
            except (UploadTooLarge, SpoolUnavailable) as e:
                self._error, self._writer = e, None  # the writer has dropped what it held
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        return self._reader().read(size)

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self.read(len(target))
            target[: len(data)] = data
            return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self._error is not None:
            return 0  # the parser rewinds every file it wrote; reading raises the error
        return self._reader().seek(offset, whence)

    def tell(self) -> int:
        if self._writer is not None:
            return self._writer.size
        if self._error is not None:
            return 0
        return self._reader().tell()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._spool is not None:
            self._spool.close()
        super().close()

    def _reader(self) -> BinaryIO:
        if self._view is None:
            self._view = self.spool().open()
        return self._view


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
