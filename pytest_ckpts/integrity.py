"""Streaming sha256 and verification stamps.

A multi-GB checkpoint must be hashed once, when it lands, not on every run. After
a successful verification we record a *stamp* (size, mtime_ns, inode, sha256) next
to the cache; a later resolve compares ``os.stat`` with the stamp and trusts the
file when they agree. Editing the file in place changes mtime (and usually size),
replacing it changes the inode, so the stamp cannot vouch for different bytes
unless someone forges all three on purpose; ``--ckpts-rehash`` re-hashes anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ChecksumMismatchError

__all__ = [
    "SHA256_RE",
    "Stamp",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "calculate_sha256",
    "read_stamp",
    "stamp_matches",
    "verify_checksum",
    "write_stamp",
]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def calculate_sha256(file_path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, streaming in 4 MiB chunks (constant memory)."""
    with open(file_path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_checksum(file_path: str | os.PathLike[str], expected_sha256: str) -> bool:
    """Return True when the file's sha256 equals ``expected_sha256``.

    Raises ``ChecksumMismatchError`` (a ``ValueError``, message contains
    "Checksum mismatch") otherwise, as seed 004's helper did.
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


@dataclass(frozen=True)
class Stamp:
    """What we knew about a file when we last hashed it."""

    size: int
    mtime_ns: int
    ino: int
    sha256: str

    @classmethod
    def of(cls, path: Path, sha256: str) -> Stamp:
        st = path.stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino, sha256=sha256)


def atomic_write_stream(path: Path, write: Callable[[BinaryIO], object]) -> None:
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
        os.fchmod(fd, 0o666 & ~_umask())
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_stream`)."""
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Text flavour of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_stamp(stamp_path: Path) -> Stamp | None:
    """Return the stamp stored at ``stamp_path``, or None if absent or unreadable."""
    try:
        data = json.loads(stamp_path.read_text("utf-8"))
        return Stamp(
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            ino=int(data["ino"]),
            sha256=str(data["sha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(stamp_path: Path, stamp: Stamp) -> None:
    """Store ``stamp`` atomically."""
    atomic_write_text(stamp_path, json.dumps(asdict(stamp), sort_keys=True))


def stamp_matches(path: Path, stamp: Stamp | None) -> bool:
    """True when ``path`` still has the size, mtime and inode recorded in ``stamp``."""
    if stamp is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (stamp.size, stamp.mtime_ns, stamp.ino)
