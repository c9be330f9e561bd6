"""Deterministic ``.tar.gz`` archives of checkpoint directories, with a manifest.

Archive-first uploads (``pytest_ckpts.uploads``) send one file per checkpoint
directory instead of hundreds of per-file artifact calls. For that archive to be
trustworthy it must be

- **deterministic**: sorted members, fixed mtimes (``SOURCE_DATE_EPOCH`` or the
  creation time for every member), uid/gid 0, no user names, normalised modes
  (0o644, 0o755 with an exec bit, 0o755 for directories), PAX format, gzip header
  mtime 0 and no file name: the same tree gives byte-identical archives, so uploads
  dedupe and a changed archive means changed content;
- **self-describing**: ``MANIFEST.json`` is the *first* member and lists every file
  with its size and sha256, so a streaming reader knows what to expect before the
  first byte of data and ``verify_archive``/``extract_archive`` can prove integrity;
- **safe to extract**: absolute paths, ``..``, links, device/FIFO members, a file
  that is also used as a directory, an oversized ``MANIFEST.json`` and data beyond
  ``max_bytes`` or the free disk space are refused, and a refused archive leaves nothing;
- **fast and small in memory**: two streaming passes (hash every file, then write
  ``MANIFEST.json`` and the files, re-hashing to catch files that change in between),
  compressed with ISA-L when the ``isal`` package is installed (extra ``[mlflow]``),
  else zlib, in a worker thread fed with big pooled buffers (``_tarstream``). The
  result is a standard ``.tar.gz`` that ``tar xzf`` and ``tarfile`` read.

Empty directories: every directory is stored as a directory member (empty ones
included), so ``tar xzf`` and :func:`extract_archive` reproduce the tree exactly.
``MANIFEST.json`` lists regular files only, and ``file_count``/``total_size`` count
files only, because only files carry content that can be verified.

Byte-identical output assumes the same compressor: ISA-L and zlib produce different
(equally valid) streams, so an archive built with ``isal`` installed differs from one
built without it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _tarstream
from ._archive_read import FORMAT_VERSION, MANIFEST_NAME, MAX_MANIFEST_BYTES, Limits, unsafe, walk
from ._tarstream import Crc32, TarGzWriter
from .errors import ArchiveError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "ArchiveError",
    "create_archive",
    "extract_archive",
    "verify_archive",
]

logger = logging.getLogger("pytest_ckpts.archive")

_HASH_CHUNK = 4 * 1024 * 1024
_note_no_isal = _tarstream.note_no_isal  # the once-per-process fallback note

#: Largest accepted ``SOURCE_DATE_EPOCH``: 9999-12-31T23:59:59Z, the last instant an
#: ISO-8601 ``created_at`` can name.
_MAX_EPOCH = 253402300799


def _source_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds convention), else the current time."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return int(time.time())
    try:
        epoch = int(value)
    except ValueError:
        epoch = -1
    if not 0 <= epoch <= _MAX_EPOCH:
        raise ArchiveError(
            f"pytest-ckpts: SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds "
            f"between 0 and {_MAX_EPOCH} (year 9999); fix or unset the environment variable"
        )
    return epoch


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``, returning the directories it created, deepest first.

    Callers remove them again on failure, so a refused operation leaves no trace
    outside the paths it was given.
    """
    missing = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(created: list[Path]) -> None:
    for d in created:  # deepest first
        try:
            d.rmdir()
        except OSError:  # not empty (someone else wrote there) or already gone
            return


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    is_dir: bool
    mode: int
    size: int = 0
    sha256: str = ""
    crc32: int = 0  # of the content, to spot a change before the write pass (see _write_members)


def _scan(src: Path) -> list[_Entry]:
    """Sorted entries of ``src``; refuses links and special files before any output."""
    out: list[_Entry] = []

    def fail(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(src, onerror=fail):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = path.relative_to(src).as_posix()
            if rel == MANIFEST_NAME:
                raise ArchiveError(
                    f"pytest-ckpts: {path} would clash with the archive's own {MANIFEST_NAME}; "
                    "rename it"
                )
            reason = unsafe(rel)
            if reason is not None:
                raise ArchiveError(f"pytest-ckpts: cannot archive {path}: {reason} in its name")
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError(
                    f"pytest-ckpts: cannot archive symlink {path}: archives hold regular "
                    "files only (copy the target in instead)"
                )
            if stat.S_ISDIR(st.st_mode):
                out.append(_Entry(rel, path, True, 0o755))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(_Entry(rel, path, False, mode))
            else:
                raise ArchiveError(
                    f"pytest-ckpts: cannot archive {path}: not a regular file "
                    "(FIFO, socket or device); remove it from the checkpoint directory"
                )
    # Sorting full paths keeps each directory before its contents ("a" < "a/x").
    out.sort(key=lambda e: e.rel)
    return out


def _hash_file(entry: _Entry) -> _Entry:
    digest = hashlib.sha256()
    crc = Crc32()
    size = 0
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with entry.path.open("rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
            crc.update(view[:n])
            size += n
    return _Entry(entry.rel, entry.path, False, entry.mode, size, digest.hexdigest(), crc.value)


def _hash_all(entries: list[_Entry]) -> list[_Entry]:
    """First pass: hash the files, two at a time (``hashlib`` releases the GIL)."""
    files = [e for e in entries if not e.is_dir]
    if len(files) < 2:
        hashed = [_hash_file(e) for e in files]
    else:
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            hashed = list(pool.map(lambda e: _hash_file(e), files))
    by_rel = {e.rel: e for e in hashed}
    return [by_rel.get(e.rel, e) for e in entries]


def _info(
    name: str, mtime: int, *, mode: int, size: int = 0, is_dir: bool = False
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = mode
    info.size = size
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    return info


def create_archive(
    checkpoint_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    trial_number: int | None = None,
    stage: str | None = None,
) -> Path:
    """Archive ``checkpoint_dir`` into ``dest`` (a ``.tar.gz``) with ``MANIFEST.json`` first.

    The archive appears at ``dest`` complete or not at all: it is written to a temp
    file beside it and renamed, so a reader (or an uploader) never sees half an
    archive. Any problem (a symlink, FIFO, socket or device in the source, an
    unreadable file, a file that changes while it is read) raises ``ArchiveError``
    before anything reaches ``dest`` and leaves no temp file (nor a parent directory
    it created). A ``dest`` that is a directory or lies inside ``checkpoint_dir`` is
    refused up front, before any file is read. ``trial_number`` and
    ``stage`` are recorded in the manifest so the archive says where it came from.
    """
    src = Path(checkpoint_dir)
    out = Path(dest)
    if not src.is_dir():
        raise ArchiveError(
            f"pytest-ckpts: checkpoint directory {src} does not exist or is not a directory"
        )
    # Checked before hashing gigabytes: both would only fail (or surprise) at the end.
    if out.is_dir():
        raise ArchiveError(f"pytest-ckpts: archive destination {out} is a directory; name a file")
    if Path(os.path.realpath(out)).is_relative_to(os.path.realpath(src)):
        raise ArchiveError(
            f"pytest-ckpts: archive destination {out} is inside the checkpoint directory "
            f"{src}; the next archive would contain this one. Write it elsewhere"
        )
    epoch = _source_epoch()
    created = _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).isoformat().replace("+00:00", "Z")
    try:
        entries = _hash_all(_scan(src))
    except OSError as exc:
        raise ArchiveError(f"pytest-ckpts: could not archive {src}: {exc}") from exc
    files = [{"path": e.rel, "size": e.size, "sha256": e.sha256} for e in entries if not e.is_dir]
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": created,
        "stage": stage,
        "trial_number": trial_number,
        "file_count": len(files),
        "total_size": sum(e.size for e in entries),
        "files": files,
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    made_dirs: list[Path] = []
    tmp: Path | None = None
    try:
        made_dirs = _make_parents(out.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as raw:
            gz = TarGzWriter(raw)
            try:
                _write_members(gz, entries, epoch, data)
                gz.finish()
            finally:
                gz.abort()
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600; an archive is not a secret
        os.replace(tmp, out)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_empty(made_dirs)
        if isinstance(exc, OSError):
            raise ArchiveError(f"pytest-ckpts: could not archive {src}: {exc}") from exc
        raise
    logger.debug(
        "archived %s: %d files, %d bytes -> %s", src, len(files), manifest["total_size"], out
    )
    return out


def _write_members(gz: TarGzWriter, entries: list[_Entry], epoch: int, manifest: bytes) -> None:
    """Second pass: MANIFEST.json, then every entry, checked against the first pass.

    A file that changed since it was hashed is refused here, by its size and the
    CRC-32 of its content, rather than by hashing it with sha256 again: that second
    sha256 pass cost a fifth of the CPU time of ``create_archive`` (see
    docs/archive.md). Missing a change needs a CRC collision (odds 2**-32, none for
    a change of up to 32 consecutive bits), and even then nothing is trusted
    wrongly: the manifest's sha256 no longer matches the member, so
    ``verify_archive`` and ``extract_archive`` refuse the archive.
    """
    gz.header(_info(MANIFEST_NAME, epoch, mode=0o644, size=len(manifest)))
    gz.write(manifest)
    gz.pad()
    for e in entries:
        if e.is_dir:
            gz.header(_info(e.rel, epoch, mode=0o755, is_dir=True))
            continue
        gz.header(_info(e.rel, epoch, mode=e.mode, size=e.size))
        crc = Crc32()
        with e.path.open("rb", buffering=0) as f:
            copied = gz.copy_from(f, e.size, crc)
            if copied != e.size or f.read(1) or crc.value != e.crc32:
                raise ArchiveError(
                    f"pytest-ckpts: {e.path} changed while it was archived; "
                    "archive a checkpoint only after it is fully written"
                )
        gz.pad()


def verify_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every member against ``MANIFEST.json``; return the manifest or raise ``ArchiveError``.

    Checks run in one streaming pass: member safety (as :func:`extract_archive`, so an
    archive that verifies can be extracted), every listed file present with its size
    and sha256, and no member that is not listed. Use it before uploading or trusting
    an archive you did not just build.
    """
    return walk(Path(path), None)


def extract_archive(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
) -> Path:
    """Extract a verified archive into ``dest`` (absent or empty), all or nothing.

    Members are written into a temporary directory beside ``dest`` and checked
    against the manifest; only then is the directory renamed into place, so ``dest``
    holds exactly the archived tree or is left as it was. ``MANIFEST.json`` is checked,
    not written, so ``dest`` matches the original checkpoint directory. Unsafe members
    (absolute paths, ``..``, symlinks, hard links, devices, FIFOs) are refused even when
    the manifest lists them. Before any file is written, the sizes the manifest
    declares must fit in ``max_bytes`` (when given) and in the free space of dest's
    filesystem; a member that would take the data past either is refused before its
    bytes are written.
    """
    archive = Path(path)
    target = Path(os.path.abspath(dest))  # so "." or "dir/" still has a parent and a name
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
        raise ArchiveError(
            f"pytest-ckpts: extract_archive({archive}): max_bytes={max_bytes!r} must be a "
            "whole number of bytes >= 0, or None for no limit"
        )
    if target.is_symlink():
        raise ArchiveError(
            f"pytest-ckpts: extraction target {target} is a symlink; name a real directory"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(
            f"pytest-ckpts: extraction target {target} exists and is not an empty directory; "
            "name an absent or empty directory"
        )
    made_dirs: list[Path] = []
    staging: Path | None = None
    try:
        made_dirs = _make_parents(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
        limits = Limits(max_bytes, target.parent, shutil.disk_usage(staging).free)
        walk(archive, staging, limits)
        os.chmod(staging, 0o755)  # mkdtemp makes 0o700
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made_dirs)
        if isinstance(exc, OSError):  # from the staging directory, not the archive
            raise ArchiveError(
                f"pytest-ckpts: could not extract {archive} to {target}: {exc}"
            ) from exc
        raise
    return target
