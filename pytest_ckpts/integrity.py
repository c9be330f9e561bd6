"""Streaming sha256 and atomic writes.

Verification stamps (hash once, trust ``stat`` afterwards) live in
:mod:`pytest_ckpts.cache`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
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
_O_BINARY = getattr(os, "O_BINARY", 0)


def calculate_sha256(file_path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file in constant memory (``hashlib.file_digest`` reads it in
    256 KiB chunks)."""
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
        raise ChecksumMismatchError(path=Path(file_path), expected=expected, actual=actual)
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
    fd, tmp = _create_temp(path)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
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


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusive temp file beside ``path``, created 0666 so the OS applies the umask.

    ``mkstemp`` would make it 0600 and fixing that up needs the umask, which a process can
    only read by changing it: teammates sharing a cache or log directory can read what we
    wrote, and the process's umask is left alone.
    """
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {path}")  # pragma: no cover


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_stream`).

    ``mode`` keeps an existing file's permissions; default: what ``open()`` would give.
    """
    atomic_write_stream(path, lambda f: f.write(data), mode=mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Text flavour of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
