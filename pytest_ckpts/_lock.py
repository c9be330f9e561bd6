"""The per-file download lock: ``flock`` on a lock file, held by one process at a time.

``filelock.FileLock`` costs ~0.25 ms per acquire and release here, as much as fetching
a small file; a bare ``fcntl.flock`` costs ~10 µs and is the same lock (``filelock``'s
Unix lock is an ``flock`` too), so ``cache prune`` and other versions still see it.
A lock is taken per open file description: threads of one process exclude each other
as processes do. Where ``fcntl`` is missing (Windows), ``filelock`` does the work.

The holder writes ``<pid> <host>`` into the lock file and empties it on release, so a
process that times out waiting can say who holds it (:func:`holder`), and a cache copied
while free (``actions/cache``) names nobody. An ``flock`` is freed when its process
ends, so a timeout always means a live holder: deleting the lock file would only let
a second download write beside it, which is why no message suggests that.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LockTimeout

__all__ = ["acquire", "holder"]


class _Flock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.ftruncate(fd, 0)  # unsigned while free: a copied cache names nobody
            except OSError:
                pass
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
            raise LockTimeout(str(path), path=path, holder=holder(path)) from None
        return _FileLock(lock)
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(str(path), path=path, holder=holder(path)) from None
                time.sleep(min(poll, left))
                continue
            _sign(fd)
            return _Flock(fd)
    except BaseException:
        os.close(fd)
        raise


def _sign(fd: int) -> None:
    """Write this process into the lock file it now holds (best effort: a full disk
    must not fail a download that only needs the lock)."""
    mark = f"{os.getpid()} {_host()}\n".encode()
    try:
        os.pwrite(fd, mark, 0)
        os.ftruncate(fd, len(mark))
    except OSError:
        pass


def holder(path: Path) -> str | None:
    """Who holds (or last held) the lock at ``path``: ``"process <pid> on <host>"``, or
    None when the file says nothing usable (a ``filelock`` holder writes nothing)."""
    try:
        with open(path, "rb") as f:
            words = f.read(256).decode("ascii", "replace").split()
    except OSError:
        return None
    # the file may come from a copied cache: only a pid and a host name get printed
    if len(words) != 2 or not words[0].isdigit() or not _HOST.fullmatch(words[1]):
        return None
    pid, host = int(words[0]), words[1]
    if host == _host() and not _alive(pid):
        return None  # killed while holding it; whoever holds it now did not sign
    return f"process {pid} on {host}"


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _host() -> str:
    if hasattr(os, "uname"):
        return os.uname().nodename
    import platform  # pragma: no cover (Windows)

    return platform.node()  # pragma: no cover


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True
