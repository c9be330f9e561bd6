"""Atomic, hashed writes of experiment files.

Every file goes through ``pytest_ckpts.integrity.atomic_write_stream`` (temp file
beside the target, fsync, rename), so it appears complete or not at all and gets
the same umask-based mode as any other file the user creates. The sha256 and size
the index records are computed while the bytes are written, so a multi-GB
checkpoint is never read back.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..integrity import atomic_write_stream

__all__ = ["Staged", "fsync_dir", "hashed_atomic_write", "stage"]


class _HashingWriter:
    """File wrapper that hashes what passes through, so nothing is read back."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self.size += view.nbytes
        return self._raw.write(view)

    def flush(self) -> None:
        self._raw.flush()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def hashed_atomic_write(path: Path, write: Callable[[Any], object]) -> tuple[str, int]:
    """Run ``write(f)`` into ``path`` atomically; return (sha256, size) of what landed."""
    box: list[_HashingWriter] = []

    def run(f: BinaryIO) -> None:
        box.append(_HashingWriter(f))
        write(box[0])

    atomic_write_stream(path, run)
    return box[0].sha256, box[0].size


class Staged(NamedTuple):
    """A complete, fsynced file waiting to be renamed to ``target``."""

    tmp: Path
    target: Path
    sha256: str
    size: int


def stage(target: Path, write: Callable[[Any], object]) -> Staged:
    """Write what ``target`` should hold to a hidden ``.tmp`` file beside it.

    Split from the rename so the (slow) tensor write happens outside the index lock:
    the lock then covers only rename + index update, milliseconds whatever the size.
    The staged name is unique per call (concurrent savers of one step do not
    collide) and ends in ``.tmp``, so a run killed before the rename leaves a file
    ``assert_experiment_layout`` reports as an interrupted write.
    """
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    sha256, size = hashed_atomic_write(tmp, write)
    return Staged(tmp, target, sha256, size)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
