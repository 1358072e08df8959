"""A large streamed upload to S3 holds a bounded number of parts in memory."""

from __future__ import annotations

import io
import tracemalloc

import pytest

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
