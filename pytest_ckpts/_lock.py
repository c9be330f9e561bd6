"""The per-file download lock: ``flock`` on a lock file, held by one process at a time.

``filelock.FileLock`` costs ~0.25 ms per acquire and release here, as much as fetching
a small file; a bare ``fcntl.flock`` costs ~10 µs and is the same lock (``filelock``'s
Unix lock is an ``flock`` too), so ``cache prune`` and other versions still see it.
A lock is taken per open file description: threads of one process exclude each other
as processes do. Where ``fcntl`` is missing (Windows), ``filelock`` does the work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LockTimeout

__all__ = ["acquire"]


class _Flock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the descriptor releases the lock


class _FileLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def release(self) -> None:
        self._lock.release()


def acquire(path: Path, timeout: float, *, poll: float = 0.05) -> _Flock | _FileLock:
    """Hold the lock at ``path`` (created if missing); ``LockTimeout`` after ``timeout``
    seconds, ``OSError`` when the lock file cannot be opened (a read-only cache)."""
    if sys.platform == "win32":  # pragma: no cover
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise LockTimeout(str(path)) from None
        return _FileLock(lock)
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _Flock(fd)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(str(path)) from None
                time.sleep(min(poll, left))
    except BaseException:
        os.close(fd)
        raise
