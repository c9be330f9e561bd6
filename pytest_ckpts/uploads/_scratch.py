"""Private scratch directories for archives being uploaded, and the sweep of dead ones.

A checkpoint archive is as big as the checkpoint, so it must not outlive its upload.
``finally`` removes it on success, on errors and on Ctrl-C, but not when the process is
killed (SIGTERM from a job scheduler, SIGKILL, a crash). Library code may not install
signal handlers, so instead every scratch directory is paired with a lock file that its
process holds while the directory is in use::

    <tempdir>/pytest-ckpts-uploads-<uid>/<pid>-<random>/      the archive
    <tempdir>/pytest-ckpts-uploads-<uid>/<pid>-<random>.lock  held (flock) while in use

The operating system releases the lock when the process dies, however it dies. Each new
scratch directory first removes the directories whose lock nobody holds: what a killed
upload left behind disappears at the next upload. The root goes when it is empty. A live upload's lock cannot be taken,
by another process or another thread of the same one, so it is never swept, and a
reused pid does not matter. See docs/uploads.md, "Temporary files".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import UploadError

ROOT_PREFIX = "pytest-ckpts-uploads"
_LOCK_SUFFIX = ".lock"
_WINDOWS = sys.platform == "win32"

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        """Take the lock on ``fd`` without waiting; False when someone holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError when held; anything else: leave it alone
            return False
        return True


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)
    return getuid() if callable(getuid) else None


def scratch_root() -> Path:
    """This user's directory of scratch directories, in the current temp dir.

    Per user, private (0700), and refused when it is a symlink or someone else's: other
    users share the temp dir, and our archives must not land in their directory.
    """
    uid = _uid()
    root = Path(tempfile.gettempdir()) / (ROOT_PREFIX + ("" if uid is None else f"-{uid}"))
    for _ in range(100):
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UploadError(
                f"pytest-ckpts: cannot create {root} for upload archives ({exc.strerror}); "
                "point TMPDIR at a writable directory"
            ) from None
        try:
            info = root.lstat()
            break
        except FileNotFoundError:  # another upload removed it, empty, in between
            continue
    else:
        raise UploadError(f"pytest-ckpts: cannot create {root} for upload archives")
    if not stat.S_ISDIR(info.st_mode) or (uid is not None and info.st_uid != uid):
        raise UploadError(
            f"pytest-ckpts: {root} is not a directory of this user; remove it, or point "
            "TMPDIR at a directory of your own"
        )
    return root


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not unlinked or replaced)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def sweep(root: Path) -> list[str]:
    """Remove the scratch directories in ``root`` whose lock no process holds.

    Returns the names removed. Never raises for a directory it cannot remove: a
    leftover must not fail the upload that found it.
    """
    removed: list[str] = []
    try:
        entries = [e.name for e in os.scandir(root) if e.name.endswith(_LOCK_SUFFIX)]
    except OSError:
        return removed
    for lock_name in entries:
        lock = root / lock_name
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:  # removed meanwhile by its owner or another sweep
            continue
        try:
            stale = _try_lock(fd) and _same_file(fd, lock)
            if stale:
                shutil.rmtree(root / lock_name[: -len(_LOCK_SUFFIX)], ignore_errors=True)
                # unlinked while still locked: a new upload that created this very file
                # a moment ago then finds its lock file gone, and picks another name
                with contextlib.suppress(OSError):
                    lock.unlink()
        finally:
            os.close(fd)
        if stale:
            if _WINDOWS:  # an open file cannot be unlinked there
                with contextlib.suppress(OSError):
                    lock.unlink()
            removed.append(lock_name[: -len(_LOCK_SUFFIX)])
    return removed


def _claim(root: Path) -> tuple[int, Path, Path]:
    """Create a locked lock file and its scratch directory: (fd, lock, directory)."""
    for _ in range(100):
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        lock = root / (name + _LOCK_SUFFIX)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except FileNotFoundError:  # another upload just removed the empty root
            root = scratch_root()
            continue
        # A sweep may take the lock between create and lock and remove the file: then
        # this one is no longer the one at the path, so start over with a new name.
        if _try_lock(fd) and _same_file(fd, lock):
            directory = root / name
            directory.mkdir(mode=0o700)
            return fd, lock, directory
        os.close(fd)
    raise UploadError(f"pytest-ckpts: could not create a scratch directory in {root}")


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh private directory for one upload, removed afterwards whatever happened.

    Sweeps what killed uploads left behind first, and removes the root when it is
    left empty, so a finished upload leaves nothing in the temp dir.
    """
    root = scratch_root()
    sweep(root)
    fd, lock, directory = _claim(root)
    try:
        yield directory
    finally:
        try:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            # unlink while holding the lock, so no sweep finds it unlocked; Windows
            # cannot unlink an open file: there it goes after the close
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
            if _WINDOWS:
                with contextlib.suppress(OSError):
                    lock.unlink()
            with contextlib.suppress(OSError):  # still in use by other uploads: stays
                root.rmdir()
