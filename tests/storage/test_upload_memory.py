"""A large upload holds a bounded amount in memory: streamed to S3 (a bounded number of
parts), and pushed into a spool by a form parser (the spool's memory limit)."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest

from storage.errors import UploadTooLarge
from storage.ingest import SpoolFile, SpoolWriter
from storage.objects import S3ObjectStore

MIB = 1024 * 1024


class _Stream(io.RawIOBase):
    """``size`` bytes made on demand and not seekable, like the encrypting reader."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


@pytest.mark.s3
@pytest.mark.slow
def test_multipart_upload_buffers_about_one_part_per_thread(s3_store: S3ObjectStore) -> None:
    size = 96 * MIB  # twelve 8 MiB parts, four request threads
    tracemalloc.start()
    try:
        info = s3_store.put("big/object", io.BufferedReader(_Stream(size)), size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == size
    # Four parts in flight, one being read and this stream's copies of it: about 52 MiB.
    # s3transfer's default of ten buffered parts reached 98 MiB here.
    assert peak < 64 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"


@pytest.mark.parametrize("over_the_limit", [False, True])
def test_a_parser_pushing_a_large_upload_into_a_spool_holds_its_memory_limit(
    tmp_path: Path, over_the_limit: bool
) -> None:
    """What werkzeug's form parser does with a file part: write it in 64 KiB pieces into
    a SpoolFile, rewind it, read it. Memory stays at the spool's limit whatever the
    size; past the size limit nothing more is kept, in memory or on disk."""
    size, memory_limit = 40 * MIB, 8 * MIB
    filler = os.urandom(64 * 1024)
    max_bytes = size - MIB if over_the_limit else size
    writer = SpoolWriter(memory_limit=memory_limit, directory=tmp_path, max_bytes=max_bytes)
    file = SpoolFile(writer)
    written, read = hashlib.sha256(), hashlib.sha256()
    tracemalloc.start()
    try:
        for n in range(size // len(filler)):
            piece = n.to_bytes(8, "big") + filler[8:]  # a new object, as the parser's are
            written.update(piece)
            file.write(piece)
        file.seek(0)
        if over_the_limit:
            with pytest.raises(UploadTooLarge):
                file.spool()
        else:
            assert file.spool().size == size
            while block := file.read(MIB):
                read.update(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        file.close()
    if not over_the_limit:
        assert read.digest() == written.digest()
    # The memory spool's 8 MiB (before the spill) and a few read buffers.
    assert peak < memory_limit + 4 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
