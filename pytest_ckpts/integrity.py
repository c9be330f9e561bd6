"""Streaming sha256 and atomic writes.

Verification stamps (hash once, trust ``stat`` afterwards) live in
:mod:`pytest_ckpts.cache`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import ChecksumMismatchError

__all__ = [
    "SHA256_RE",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "calculate_sha256",
    "verify_checksum",
]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def calculate_sha256(file_path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, streaming in 4 MiB chunks (constant memory)."""
    with open(file_path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_checksum(file_path: str | os.PathLike[str], expected_sha256: str) -> bool:
    """Return True when the file's sha256 equals ``expected_sha256``.

    Raises ``ChecksumMismatchError`` (a ``ValueError``, message contains
    "Checksum mismatch") otherwise, as the original downloader's helper did (docs/how-to/writing-tests.md "The library API").
    """
    actual = calculate_sha256(file_path)
    expected = expected_sha256.strip().lower()
    if actual != expected:
        raise ChecksumMismatchError(
            f"pytest-ckpts: Checksum mismatch for {os.fspath(file_path)}\n"
            f"  expected sha256: {expected}\n"
            f"  actual sha256:   {actual}",
            path=Path(file_path),
            expected=expected,
            actual=actual,
        )
    return True


def atomic_write_stream(
    path: Path, write: Callable[[BinaryIO], object], *, mode: int | None = None
) -> None:
    """Run ``write(f)`` into a temp file beside ``path``, fsync, then rename it into place.

    Readers see the old file or the new one, never half of one; an exception (or a
    crash) mid-write leaves no temp file behind. ``write`` may stream, so payloads
    need not fit in memory twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the usual umask-based mode, as open() would,
        # so teammates sharing a cache or log directory can read what we wrote.
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@functools.cache
def _umask() -> int:
    """The process umask, read once (flipping it per write would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the only portable way, once per process
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_stream`).

    ``mode`` keeps an existing file's permissions; default: what ``open()`` would give.
    """
    atomic_write_stream(path, lambda f: f.write(data), mode=mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Text flavour of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
