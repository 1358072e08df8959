"""The one ingestion pipeline, and its inverse.

``Vault.store``: stream → size limit → spool → inspect → hash → encrypt → put.
``Vault.open``: unwrap the data key → authenticate the whole object → decrypt stream.

The upload is spooled because inspection needs random access (pypdf seeks). The spool
stays in memory up to ``memory_spool_bytes`` and then moves to a temporary file that is
itself encrypted under a throwaway key, so plaintext never rests on the server's disk.
Any failure at any step leaves nothing in the object store: the object store's ``put``
is atomic, and a failure after it deletes the object again.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from storage.envelope import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    EncryptingReader,
    ObjectIdentity,
    decrypt,
    sealed_size,
)
from storage.errors import IntegrityError
from storage.inspect import Inspection, LimitedReader, inspect, safe_filename
from storage.keyring import Keyring
from storage.objects import ObjectStore

_COPY_CHUNK = 256 * 1024


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

    ``max_bytes`` is the upload limit, enforced while reading. ``spool_dir`` holds
    the (encrypted) spill files of large uploads; it defaults to the system temp dir.
    """

    def __init__(
        self,
        store: ObjectStore,
        keyring: Keyring,
        *,
        max_bytes: int,
        spool_dir: Path | None = None,
        memory_spool_bytes: int = 4 * 1024 * 1024,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.max_bytes = max_bytes
        self._spool_dir = spool_dir
        self._memory_spool_bytes = memory_spool_bytes
        self._segment_size = segment_size

    def store_file(
        self, stream: BinaryIO, filename: str, identity: ObjectIdentity, object_key: str
    ) -> StoredFile:
        """Inspect, encrypt and store one upload under ``object_key``.

        Raises UploadTooLarge (over ``max_bytes``, detected while streaming),
        ContentRejected (refused by inspection, or a bad filename), StorageUnavailable
        or StorageError from the object store. Nothing is stored when it raises.
        """
        name = safe_filename(filename)
        with self.spool(stream) as spool:
            return self.store_spooled(spool, name, identity, object_key)

    def spool(self, stream: BinaryIO) -> io.BufferedRandom:
        """Copy ``stream`` into a seekable spool, enforcing the size limit while reading.

        Raises UploadTooLarge past ``max_bytes``; the caller closes the returned spool.
        """
        spool = io.BufferedRandom(
            EncryptedSpool(self._memory_spool_bytes, self._spool_dir), buffer_size=_COPY_CHUNK
        )
        try:
            limited = LimitedReader(stream, self.max_bytes)
            while chunk := limited.read(_COPY_CHUNK):
                spool.write(chunk)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def store_spooled(
        self, spool: BinaryIO, filename: str, identity: ObjectIdentity, object_key: str
    ) -> StoredFile:
        """Inspect, encrypt and put an already spooled (seekable) file; see ``store_file``."""
        spool.seek(0)
        found: Inspection = inspect(spool, filename)
        spool.seek(0)
        context = identity.encode()
        data_key = self.keyring.generate_data_key(context)
        reader = EncryptingReader(
            spool,
            data_key.plaintext,
            identity,
            data_key.key_id,
            data_key.key_version,
            segment_size=self._segment_size,
        )
        expected_size = sealed_size(found.size, self._segment_size)
        info = self.store.put(object_key, reader, expected_size)
        try:
            # SECURITY: the bytes encrypted must be exactly the bytes inspected.
            if reader.plaintext_size != found.size or info.size != expected_size:
                raise IntegrityError(
                    f"stored {info.size} bytes for {found.size} inspected, expected "
                    f"{expected_size}: the upload changed while it was being stored"
                )
        except BaseException:
            self.store.delete(object_key)
            raise
        return StoredFile(
            object_key=object_key,
            filename=filename,
            mime_type=found.mime_type,
            page_count=found.page_count,
            size=found.size,
            stored_size=info.size,
            sha256=reader.plaintext_sha256,
            wrapped_dek=data_key.wrapped,
            key_id=data_key.key_id,
            key_version=data_key.key_version,
            format_version=FORMAT_VERSION,
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


class EncryptedSpool(io.RawIOBase):
    """A seekable scratch file: in memory while small, then an encrypted temp file.

    The temp file is encrypted with AES-256-CTR under a random key that lives only in
    this object, and is unlinked on creation, so plaintext never rests on disk and no
    file outlives the process. CTR allows reading at any offset, which inspection needs.
    """

    def __init__(self, memory_limit: int, directory: Path | None) -> None:
        super().__init__()
        self._memory_limit = memory_limit
        self._directory = directory
        self._buffer: io.BytesIO | None = io.BytesIO()
        self._file: BinaryIO | None = None
        self._key = os.urandom(32)
        self._nonce = os.urandom(8)
        self._position = 0
        self._size = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        if self._buffer is not None and self._position + len(chunk) > self._memory_limit:
            self._spill()
        if self._buffer is not None:
            written = self._buffer.write(chunk)
        else:
            assert self._file is not None
            self._file.seek(self._position)
            written = self._file.write(self._crypt(self._position, chunk))
        self._position += written
        self._size = max(self._size, self._position)
        return written

    def read(self, size: int = -1) -> bytes:
        remaining = self._size - self._position
        count = remaining if size < 0 else min(size, remaining)
        if count <= 0:
            return b""
        if self._buffer is not None:
            self._buffer.seek(self._position)
            data = self._buffer.read(count)
        else:
            assert self._file is not None
            self._file.seek(self._position)
            data = self._crypt(self._position, self._file.read(count))
        self._position += len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buffer = None
        super().close()

    def _spill(self) -> None:
        assert self._buffer is not None
        handle = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - closed in close()
        plaintext = self._buffer.getvalue()
        handle.write(self._crypt(0, plaintext))
        self._file = handle
        self._buffer = None

    def _crypt(self, offset: int, data: bytes) -> bytes:
        """AES-CTR at byte ``offset``: the counter block is nonce ‖ (offset // 16)."""
        block, skip = divmod(offset, 16)
        counter = self._nonce + block.to_bytes(8, "big")
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        return encryptor.update(bytes(skip) + data)[skip:]
