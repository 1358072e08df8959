"""Disks that fill up, and what a process holds open in a directory: for the tests of the
encrypted spool (spill files are unlinked as soon as they are made)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import pytest


def open_files_in(directory: Path) -> list[bytes]:
    """The contents of every file this process holds open in ``directory``, including
    unlinked ones (spill and temporary files are unlinked as soon as they are made)."""
    contents = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/"):
                contents.append(os.pread(int(fd), os.fstat(int(fd)).st_size, 0))
        except OSError:
            continue  # the descriptor of the listing itself, closed by now
    return contents


class FullDisk:
    """A spill file on a disk with ``room`` bytes left: a write that crosses it takes
    what fits (a short write, as write(2) does), the next one fails with ENOSPC."""

    def __init__(self, file: BinaryIO, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = self.file.write(data[: self.room])
        self.room -= taken
        return taken

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


def fill_disk(
    monkeypatch: pytest.MonkeyPatch, room: int, kind: type[FullDisk] = FullDisk
) -> list[FullDisk]:
    """Make every spill file a ``kind`` with ``room`` bytes left; the ones made."""
    made: list[FullDisk] = []
    real = tempfile.TemporaryFile

    def make(*args: Any, **kwargs: Any) -> FullDisk:
        made.append(kind(real(*args, **kwargs), room))
        return made[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", make)
    return made
