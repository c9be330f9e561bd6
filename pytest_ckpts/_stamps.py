"""Verification stamps on disk: one append-only log per repo folder, read once per process.

``<stamps dir>/stamps.jsonl`` holds one JSON object per line, the last line for a blob
wins::

    {"blob": "<blob name>", "size": ..., "mtime_ns": ..., "ctime_ns": ..., "ino": ...,
     "sha256": "...", "verified_at": ...}

- **Read once.** A process reads a log whole the first time it needs it, then only what
  other processes appended since (one ``stat`` of the log per look-up says whether
  anything changed). A replaced log (compacted, revoked, deleted) is read again whole.
- **Written by appending.** One ``write()`` of ``"\\n" + line + "\\n"`` with
  ``O_APPEND``: concurrent writers never interleave on a local file system, and the
  leading newline ends a line a killed or crashed writer left unfinished. A line that
  does not parse as a whole stamp is ignored, so a torn or lost line costs a re-hash,
  never a wrong answer.
- **No fsync per stamp.** A stamp vouches for a blob only while ``stat`` of that blob
  still shows the size, mtime, ctime and inode that were hashed; losing a stamp in a
  power cut costs one re-hash. Rewrites (compaction, revocation) are atomic renames.
- **Revoking** rewrites the log without that blob (a mismatch is rare); the log grows
  by one line per stamp and is compacted when most of its lines are superseded.

Stamps of earlier versions (``<stamps dir>/<blob>.json``, one file each) are still
read, and copied into the log the first time they vouch for a file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .integrity import atomic_write_bytes

__all__ = ["LOG_NAME", "Stamp", "StampLog", "stamp_log"]

logger = logging.getLogger("pytest_ckpts")

LOG_NAME = "stamps.jsonl"
#: a log bigger than this is not read (it would be a bug or an attack: ~300k stamps)
MAX_LOG_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Stamp:
    """What we knew about a file when we last hashed it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str
    verified_at: float = 0.0

    @classmethod
    def of(cls, path: Path, sha256: str) -> Stamp:
        st = path.stat()
        return cls(
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            sha256=sha256,
            verified_at=time.time(),
        )

    def agrees(self, st: os.stat_result) -> bool:
        """``st`` shows the size, times and inode the file had when hashed."""
        return (
            st.st_size == self.size
            and st.st_mtime_ns == self.mtime_ns
            and st.st_ctime_ns == self.ctime_ns
            and st.st_ino == self.ino
        )

    def matches(self, path: Path) -> bool:
        """``path`` still has the size, times and inode it had when hashed."""
        try:
            st = path.stat()
        except OSError:
            return False
        return self.agrees(st)


def _from_dict(data: object) -> tuple[str, Stamp] | None:
    """A stamp line's blob name and stamp, or None for anything else."""
    if not isinstance(data, dict):
        return None
    try:
        name = data["blob"]
        values = [data[k] for k in ("size", "mtime_ns", "ctime_ns", "ino")]
        sha = data["sha256"]
        when = data.get("verified_at", 0.0)
    except KeyError:
        return None
    if (
        not isinstance(name, str)
        or not name
        or not isinstance(sha, str)
        or not all(type(v) is int for v in values)
        or not isinstance(when, int | float)
    ):
        return None
    size, mtime_ns, ctime_ns, ino = values
    return name, Stamp(size, mtime_ns, ctime_ns, ino, sha256=sha, verified_at=float(when))


def _line(name: str, stamp: Stamp) -> bytes:
    data = {
        "blob": name,
        "size": stamp.size,
        "mtime_ns": stamp.mtime_ns,
        "ctime_ns": stamp.ctime_ns,
        "ino": stamp.ino,
        "sha256": stamp.sha256,
        "verified_at": stamp.verified_at,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def _parse(chunk: bytes) -> Iterable[tuple[str, Stamp]]:
    lines = [line for line in chunk.split(b"\n") if line.strip()]
    try:  # one parse for the whole chunk; line by line only if some line is torn
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
    for data in parsed:
        got = _from_dict(data)
        if got is not None:
            yield got


class StampLog:
    """One repo folder's stamps, shared by every store of the process on that cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Stamp] = {}
        #: (inode, size, mtime, ctime) of the log last looked at
        self._key: tuple[int, int, int, int] | None = None
        self._offset = 0  # bytes of it read: whole lines only
        self._last = b""  # the last whole line read, ending at ``_offset``
        self._lines = 0

    # ------------------------------------------------------------------ reading
    def lookup(self, name: str, agrees: Callable[[Stamp], bool]) -> Stamp | None:
        """The stamp of blob ``name`` if ``agrees`` accepts it (the caller's ``stat``)."""
        with self._lock:
            self._refresh()
            stamp = self._entries.get(name)
        if stamp is not None and agrees(stamp):
            return stamp
        legacy = self._legacy(name)
        if legacy is not None and agrees(legacy):
            self.append(name, legacy)  # earlier versions' stamp file: moved into the log
            return legacy
        return None

    def get(self, name: str) -> Stamp | None:
        """The latest stamp of blob ``name``, whether or not the file still agrees."""
        with self._lock:
            self._refresh()
            stamp = self._entries.get(name)
        return stamp if stamp is not None else self._legacy(name)

    def _refresh(self) -> None:
        """Read what changed since the last look: nothing, the tail, or all of it.

        A log replaced by a copy (a restored cache) can come back with the inode number
        and even the size the old one had: the stat key also holds mtime and ctime, and
        only a log whose bytes up to what was read are still the last line read is read
        from where it was left (else all of it).
        """
        try:
            st = os.stat(self.path)
        except OSError:
            self._entries, self._key, self._lines, self._last = {}, None, 0, b""
            return
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._key is not None and self._key == key:
            return  # unchanged (a torn last line included: read again only once appended to)
        appended = (
            self._key is not None and self._key[0] == st.st_ino and self._offset <= st.st_size
        )
        self._key = key
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != st.st_ino:  # replaced meanwhile
                    self._key = None
                    return
                if appended and self._last:
                    f.seek(self._offset - len(self._last))
                    appended = f.read(len(self._last)) == self._last
                start = self._offset if appended else 0
                if not appended:
                    self._entries, self._lines, self._offset, self._last = {}, 0, 0, b""
                if st.st_size - start > MAX_LOG_BYTES:
                    logger.debug("pytest-ckpts: ignoring oversized stamp log %s", self.path)
                    self._offset, self._last = st.st_size, b""
                    return
                f.seek(start)
                chunk = f.read(st.st_size - start)
        except OSError:
            self._key = None
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        for name, stamp in _parse(chunk[:end]):
            self._entries[name] = stamp
            self._lines += 1
        if end:
            self._last = chunk[max(0, chunk.rfind(b"\n", 0, end - 1) + 1) : end]
        self._offset = start + end
        if self._lines > 2 * len(self._entries) + 256:
            self._rewrite(dict(self._entries))

    def _legacy(self, name: str) -> Stamp | None:
        if name == LOG_NAME or "/" in name:
            return None
        try:
            data = json.loads((self.path.parent / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict):
            data = {**data, "blob": name}
        got = _from_dict(data)
        return None if got is None else got[1]

    # ------------------------------------------------------------------ writing
    def append(self, name: str, stamp: Stamp) -> bool:
        """Record ``stamp`` for blob ``name``; False when the cache is not writable."""
        record = b"\n" + _line(name, stamp) + b"\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd = os.open(self.path, flags, 0o666)
            except FileNotFoundError:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o666)
            try:
                written = os.write(fd, record)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.debug("pytest-ckpts: cannot write stamp for %s: %s", name, exc)
            return False
        return written == len(record)

    def forget(self, names: Iterable[str]) -> None:
        """Remove the stamps of ``names`` (and their files of earlier versions)."""
        names = set(names)
        for name in names:
            if name != LOG_NAME and "/" not in name:
                try:
                    (self.path.parent / f"{name}.json").unlink(missing_ok=True)
                except OSError as exc:
                    logger.debug("pytest-ckpts: cannot revoke stamp for %s: %s", name, exc)
        with self._lock:
            self._key = None
            self._refresh()  # everything on disk now, then write it back without ``names``
            if not names & self._entries.keys():
                return
            self._rewrite({k: v for k, v in self._entries.items() if k not in names})

    def _rewrite(self, entries: dict[str, Stamp]) -> None:
        """Replace the log by one line per blob (atomic; appends racing it are lost, which
        costs their files one re-hash)."""
        try:
            if entries:
                body = b"".join(_line(k, v) + b"\n" for k, v in entries.items())
                atomic_write_bytes(self.path, body)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("pytest-ckpts: cannot rewrite stamp log %s: %s", self.path, exc)
            self._key = None
            return
        self._entries, self._lines, self._key = entries, len(entries), None
        self._offset, self._last = 0, b""


_LOGS: dict[Path, StampLog] = {}
_LOGS_LOCK = threading.Lock()


_BY_KEY: dict[tuple[str, ...], StampLog] = {}


def stamp_log(path: Path) -> StampLog:
    """The process's one :class:`StampLog` for the log at ``path``."""
    log = _LOGS.get(path)
    if log is None:
        with _LOGS_LOCK:
            log = _LOGS.setdefault(path, StampLog(path))
    return log


def stamp_log_for(key: tuple[str, ...], path: Callable[[], Path]) -> StampLog:
    """:func:`stamp_log` of ``path()``, found by ``key`` without building the path."""
    log = _BY_KEY.get(key)
    if log is None:
        log = _BY_KEY[key] = stamp_log(path())
    return log


_BLOBS: dict[str, tuple[str, int]] = {}  # snapshot path -> (blob path, inode it had)


def blob_of(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
    """The blob ``path`` links to: one ``realpath`` per path and process, again only
    when the link now leads to another inode (``st``: ``os.stat(path)`` if known)."""
    key = os.fspath(path)
    known = _BLOBS.get(key)
    if known is not None and st is not None and known[1] == st.st_ino:
        return known[0]
    blob = os.path.realpath(key)
    if st is None:
        try:
            st = os.stat(blob)
        except OSError:
            return blob
    note_blob(key, blob, st.st_ino)
    return blob


def blob_name(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
    """The name of the blob ``path`` links to, for a stamp look-up: the link's own text
    (one ``readlink``), not a ``realpath`` (about a dozen ``lstat``). A name that is not
    the blob's finds no stamp whose inode and ctime agree with ``st``, so the file is
    hashed again: never trusted wrongly. Not a link (a cache copied without links):
    :func:`blob_of`."""
    key = os.fspath(path)
    known = _BLOBS.get(key)
    if known is not None and st is not None and known[1] == st.st_ino:
        return os.path.basename(known[0])
    try:
        return os.path.basename(os.readlink(key))
    except OSError:
        return os.path.basename(blob_of(key, st))


def note_blob(path: str | os.PathLike[str], blob: str | os.PathLike[str], ino: int) -> None:
    """``path`` links to ``blob``, inode ``ino`` (what :func:`blob_of` would find): said
    by whoever just made the link, so the next look-up needs no ``realpath``."""
    if len(_BLOBS) > 100_000:  # a long-lived process walking many caches: start over
        _BLOBS.clear()
    _BLOBS[os.fspath(path)] = (os.fspath(blob), ino)
