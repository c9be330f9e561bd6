"""Deterministic ``.tar.gz`` archives of checkpoint directories, with a manifest.

Archive-first uploads (seeds 000/001) send one file per checkpoint directory instead
of hundreds of per-file artifact calls. For that archive to be trustworthy it must be

- **deterministic**: sorted members, fixed mtimes (``SOURCE_DATE_EPOCH`` or the
  creation time for every member), uid/gid 0, no user names, normalised modes, gzip
  header mtime 0 — the same tree gives byte-identical archives, so uploads dedupe and
  a changed archive means changed content;
- **self-describing**: ``MANIFEST.json`` at the top level lists every file with its
  size and sha256, so ``verify_archive``/``extract_archive`` can prove integrity;
- **safe to extract**: absolute paths, ``..``, links and device files are refused
  even when the manifest lists them, and a refused archive leaves nothing behind;
- **fast and small in memory**: one streaming pass (files are hashed while they are
  written; ``MANIFEST.json`` is the last member), compressed with ISA-L when the
  ``isal`` package is installed (extra ``[mlflow]``), else zlib. The result is a
  standard ``.tar.gz`` that ``tar xzf`` and ``tarfile`` read.

Directories are archived as directory members (empty ones included), so extraction
reproduces the tree exactly; ``MANIFEST.json`` lists files only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .errors import CheckpointsError

__all__ = [
    "MANIFEST_NAME",
    "ArchiveError",
    "create_archive",
    "extract_archive",
    "verify_archive",
]

logger = logging.getLogger("pytest_ckpts.archive")

MANIFEST_NAME = "MANIFEST.json"
FORMAT_VERSION = 1
_CHUNK = 1024 * 1024


class ArchiveError(CheckpointsError, ValueError):
    """An archive could not be created, or is corrupt or unsafe."""


# --------------------------------------------------------------------------- writing


class _GzipWriter:
    """A write-only gzip stream with a fixed header (mtime 0, no file name).

    Compression runs in a worker thread (ISA-L and zlib release the GIL), so it
    overlaps with reading and hashing the next chunk; a bounded queue keeps memory
    at a few MiB whatever the archive size.
    """

    def __init__(self, raw: IO[bytes], level: int | None = None) -> None:
        self._raw = raw
        self._compressor, self.backend = _compressor(level)
        self._offset = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while True:
                chunk = self._queue.get()
                if chunk is None:
                    self._raw.write(self._compressor.flush())
                    return
                out = self._compressor.compress(chunk)
                if out:
                    self._raw.write(out)
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:  # drain so the producer never blocks
                pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _compressor(level: int | None) -> tuple[Any, str]:
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        logger.debug("isal not installed: compressing with zlib (slower)")
        return zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31), "zlib"
    # ISA-L level 1 is ~13x faster than zlib -6 on float32 weights, same ratio (measured).
    return isal_zlib.compressobj(1 if level is None else level, isal_zlib.DEFLATED, 31), "isal"


class _HashingReader:
    """Wraps a file so whatever ``tarfile`` reads from it is hashed and counted."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.count += len(data)
        return data


def _source_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise ArchiveError(
                f"pytest-ckpts: SOURCE_DATE_EPOCH={value!r} is not an integer number of seconds"
            ) from None
    return int(time.time())


def _scan(src: Path) -> list[tuple[str, Path, bool]]:
    """Sorted (relative posix path, path, is_dir); refuses links and special files."""
    out: list[tuple[str, Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(src).as_posix()
            if rel == MANIFEST_NAME:
                raise ArchiveError(
                    f"pytest-ckpts: {path} would clash with the archive's own {MANIFEST_NAME}"
                )
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError(
                    f"pytest-ckpts: cannot archive symlink {path}: archives hold regular "
                    "files only (copy the target in instead)"
                )
            if stat.S_ISDIR(st.st_mode):
                out.append((rel, path, True))
            elif stat.S_ISREG(st.st_mode):
                out.append((rel, path, False))
            else:
                raise ArchiveError(
                    f"pytest-ckpts: cannot archive {path}: not a regular file "
                    "(FIFO, socket or device)"
                )
    out.sort(key=lambda e: e[0])
    return out


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
    """Archive ``checkpoint_dir`` into ``dest`` (a ``.tar.gz``) with a ``MANIFEST.json``.

    The archive appears at ``dest`` complete or not at all: it is written to a temp
    file beside it and renamed. Any problem (a link or special file in the source, a
    file that changes while it is read) raises ``ArchiveError`` and leaves nothing.
    """
    src = Path(checkpoint_dir)
    out = Path(dest)
    if not src.is_dir():
        raise ArchiveError(
            f"pytest-ckpts: checkpoint directory {src} does not exist or is not a directory"
        )
    entries = _scan(src)
    epoch = _source_epoch()
    created = (
        _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc).isoformat().replace("+00:00", "Z")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    files: list[dict[str, Any]] = []
    try:
        with os.fdopen(fd, "wb") as raw:
            gz = _GzipWriter(raw)
            try:
                _write_members(gz, entries, epoch, created, files, stage, trial_number)
            finally:
                gz.close()
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArchiveError(f"pytest-ckpts: could not archive {src}: {exc}") from exc
        raise
    return out


def _write_members(
    gz: _GzipWriter,
    entries: list[tuple[str, Path, bool]],
    epoch: int,
    created: str,
    files: list[dict[str, Any]],
    stage: str | None,
    trial_number: int | None,
) -> None:
    """Write every entry, then MANIFEST.json, as one streaming tar into ``gz``."""
    with tarfile.open(
        fileobj=gz,  # type: ignore[call-overload]
        mode="w|",
        format=tarfile.PAX_FORMAT,
        bufsize=_CHUNK,
    ) as tar:
        tar.copybufsize = _CHUNK
        for rel, path, is_dir in entries:
            if is_dir:
                tar.addfile(_info(rel, epoch, mode=0o755, is_dir=True))
                continue
            st = path.stat()
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            with path.open("rb") as f:
                reader = _HashingReader(f)
                tar.addfile(_info(rel, epoch, mode=mode, size=st.st_size), reader)
                if reader.count != st.st_size or f.read(1):
                    raise ArchiveError(f"pytest-ckpts: {path} changed size while it was archived")
            files.append({"path": rel, "size": st.st_size, "sha256": reader.sha256.hexdigest()})
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": created,
            "stage": stage,
            "trial_number": trial_number,
            "file_count": len(files),
            "total_size": sum(f["size"] for f in files),
            "files": files,
        }
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        tar.addfile(_info(MANIFEST_NAME, epoch, mode=0o644, size=len(data)), io.BytesIO(data))


# --------------------------------------------------------------------------- reading


def _safe_name(member: tarfile.TarInfo) -> str:
    """The member's relative path, or ArchiveError if it could escape or is not plain."""
    name = member.name
    pure = PurePosixPath(name)
    if (
        name.startswith("/")
        or pure.is_absolute()
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
    ):
        raise ArchiveError(f"pytest-ckpts: refusing absolute path in archive: {name!r}")
    if any(part == ".." for part in pure.parts):
        raise ArchiveError(f"pytest-ckpts: refusing path with '..' in archive: {name!r}")
    if member.issym() or member.islnk():
        raise ArchiveError(
            f"pytest-ckpts: refusing link in archive: {name!r} -> {member.linkname!r}"
        )
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(
            f"pytest-ckpts: refusing special member (device, FIFO or other) in archive: {name!r}"
        )
    clean = pure.as_posix().strip("/")
    if clean in ("", "."):
        raise ArchiveError(f"pytest-ckpts: refusing empty member name in archive: {name!r}")
    return clean


def _check_manifest(manifest: Any, seen: dict[str, tuple[int, str]], where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"pytest-ckpts: {where}: {MANIFEST_NAME} missing or not format 1")
    listed = {f["path"]: f for f in manifest.get("files", [])}
    problems = []
    for path in sorted(set(listed) - set(seen)):
        problems.append(f"{path}: listed in {MANIFEST_NAME} but not in the archive")
    for path in sorted(set(seen) - set(listed)):
        problems.append(f"{path}: in the archive but not listed in {MANIFEST_NAME}")
    for path in sorted(set(listed) & set(seen)):
        size, sha = seen[path]
        if size != listed[path]["size"] or sha != listed[path]["sha256"]:
            problems.append(
                f"{path}: expected {listed[path]['size']} bytes sha256 {listed[path]['sha256']}, "
                f"got {size} bytes sha256 {sha}"
            )
    if manifest.get("file_count") != len(listed):
        problems.append(f"file_count {manifest.get('file_count')} != {len(listed)} files listed")
    if problems:
        raise ArchiveError(
            f"pytest-ckpts: {where} failed verification:\n  " + "\n  ".join(problems)
        )
    return manifest


def _walk(path: Path, sink: Path | None) -> dict[str, Any]:
    """Stream through the archive, hashing files (and writing them under ``sink``)."""
    seen: dict[str, tuple[int, str]] = {}
    manifest: Any = None
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                name = _safe_name(member)
                if name in names:
                    raise ArchiveError(f"pytest-ckpts: duplicate member {name!r} in archive")
                names.add(name)
                if member.isdir():
                    if sink is not None:
                        (sink / name).mkdir(parents=True, exist_ok=True)
                    continue
                f = tar.extractfile(member)
                assert f is not None
                if name == MANIFEST_NAME:
                    try:
                        manifest = json.loads(f.read().decode("utf-8"))
                    except ValueError as exc:
                        raise ArchiveError(
                            f"pytest-ckpts: {path}: unreadable {MANIFEST_NAME}: {exc}"
                        ) from None
                    continue
                digest = hashlib.sha256()
                size = 0
                target = None
                if sink is not None:
                    target = sink / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                out = target.open("wb") if target is not None else None
                try:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        if out is not None:
                            out.write(chunk)
                finally:
                    if out is not None:
                        out.close()
                if target is not None:
                    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                seen[name] = (size, digest.hexdigest())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"pytest-ckpts: {path} is not a readable .tar.gz: {exc}") from None
    return _check_manifest(manifest, seen, str(path))


def verify_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every member against ``MANIFEST.json``; return the manifest or raise ``ArchiveError``."""
    return _walk(Path(path), None)


def extract_archive(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a verified archive into ``dest`` (absent or empty), all or nothing.

    Members are written into a temporary directory beside ``dest`` and checked
    against the manifest; only then is the directory moved into place, so ``dest``
    holds exactly the archived tree (``MANIFEST.json`` is checked, not written). Unsafe
    members (absolute paths, ``..``, links, devices) are refused even if listed.
    """
    archive = Path(path)
    target = Path(dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(f"pytest-ckpts: extraction target {target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        _walk(archive, staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
