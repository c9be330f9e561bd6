"""Deterministic ``.tar.gz`` archives of checkpoint directories, with a manifest.

Archive-first uploads (seeds 000/001) send one file per checkpoint directory instead
of hundreds of per-file artifact calls. For that archive to be trustworthy it must be

- **deterministic**: sorted members, fixed mtimes (``SOURCE_DATE_EPOCH`` or the
  creation time for every member), uid/gid 0, no user names, normalised modes
  (0o644, 0o755 with an exec bit, 0o755 for directories), PAX format, gzip header
  mtime 0 and no file name: the same tree gives byte-identical archives, so uploads
  dedupe and a changed archive means changed content;
- **self-describing**: ``MANIFEST.json`` is the *first* member and lists every file
  with its size and sha256, so a streaming reader knows what to expect before the
  first byte of data and ``verify_archive``/``extract_archive`` can prove integrity;
- **safe to extract**: absolute paths, ``..``, links and device/FIFO members are
  refused even when the manifest lists them, and a refused archive leaves nothing;
- **fast and small in memory**: two streaming passes (hash every file, then write
  ``MANIFEST.json`` and the files, re-hashing to catch files that change in between),
  compressed with ISA-L when the ``isal`` package is installed (extra ``[mlflow]``),
  else zlib, in a worker thread with a bounded queue. The result is a standard
  ``.tar.gz`` that ``tar xzf`` and ``tarfile`` read.

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
import functools
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from .errors import CheckpointsError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ArchiveError",
    "create_archive",
    "extract_archive",
    "verify_archive",
]

logger = logging.getLogger("pytest_ckpts.archive")

#: Name of the manifest member, always first in archives we write.
MANIFEST_NAME = "MANIFEST.json"
#: ``format_version`` written to, and required in, ``MANIFEST.json``.
FORMAT_VERSION = 1
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArchiveError(CheckpointsError, ValueError):
    """An archive could not be created, or is corrupt or unsafe.

    A ``ValueError`` so callers of the seed-000 helpers, which raised ``ValueError``
    for bad checkpoints, keep catching it.
    """


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
        self._thread = threading.Thread(target=self._work, name="ckpts-gzip", daemon=True)
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
        except BaseException as exc:  # handed to the producer thread, re-raised there
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


@functools.cache
def _note_no_isal() -> None:
    """Say once per process that the slow fallback is in use (not per archive)."""
    logger.debug("isal not installed: using zlib/gzip (install pytest-ckpts[mlflow] for speed)")


def _compressor(level: int | None) -> tuple[Any, str]:
    """ISA-L when installed (optional extra), else zlib; both emit a plain gzip member.

    The import is retried per call (a sys.modules lookup) rather than cached, so the
    choice follows the environment; only the debug note is once per process.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        _note_no_isal()
        return zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31), "zlib"
    # ISA-L level 1 matches zlib -6's ratio within ~5% on float32/bf16 weights, sparse
    # tensors and JSON, at 14-25x the speed; levels 2-3 gain <1% and level 3 is 3x
    # slower (measured with isal 1.9.1, see docs/archive.md).
    return isal_zlib.compressobj(1 if level is None else level, isal_zlib.DEFLATED, 31), "isal"


def _open_gzip(path: Path) -> IO[bytes]:
    """Decompressing reader: ISA-L's igzip when installed (several times faster), else gzip."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        _note_no_isal()
        return cast("IO[bytes]", gzip.open(path, "rb"))
    opener: Any = igzip.open  # isal ships no annotations for it
    return cast("IO[bytes]", opener(path, "rb"))


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


def _unsafe(name: str) -> str | None:
    """Why ``name`` may not be a member path (shared by writer and reader), or None.

    The writer applies the same rule so that every archive it makes can be extracted.
    """
    pure = PurePosixPath(name)
    # Backslashes and drive letters are separators/roots on Windows, where a name
    # like "..\\x" or "C:x" would escape dest, so they are refused everywhere.
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        return "absolute path (or backslash / drive letter)"
    if any(part == ".." for part in pure.parts):
        return "path with '..'"
    if pure.as_posix() in ("", "."):
        return "empty member name (or '.')"
    return None


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    is_dir: bool
    mode: int
    size: int = 0
    sha256: str = ""


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
            reason = _unsafe(rel)
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
    size = 0
    with entry.path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return _Entry(entry.rel, entry.path, False, entry.mode, size, digest.hexdigest())


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
        entries = [e if e.is_dir else _hash_file(e) for e in _scan(src)]
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
            gz = _GzipWriter(raw)
            try:
                _write_members(gz, entries, epoch, data)
            finally:
                gz.close()
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


def _write_members(gz: _GzipWriter, entries: list[_Entry], epoch: int, manifest: bytes) -> None:
    """Write MANIFEST.json, then every entry, as one streaming tar into ``gz``."""
    with tarfile.open(
        fileobj=gz,  # type: ignore[call-overload]
        mode="w|",
        format=tarfile.PAX_FORMAT,
        bufsize=_CHUNK,
    ) as tar:
        tar.copybufsize = _CHUNK
        tar.addfile(
            _info(MANIFEST_NAME, epoch, mode=0o644, size=len(manifest)), io.BytesIO(manifest)
        )
        for e in entries:
            if e.is_dir:
                tar.addfile(_info(e.rel, epoch, mode=0o755, is_dir=True))
                continue
            changed = ArchiveError(
                f"pytest-ckpts: {e.path} changed while it was archived; "
                "archive a checkpoint only after it is fully written"
            )
            with e.path.open("rb") as f:
                reader = _HashingReader(f)
                try:
                    tar.addfile(_info(e.rel, epoch, mode=e.mode, size=e.size), reader)
                except OSError as exc:
                    # tarfile's "unexpected end of data" (no errno): the file shrank.
                    if exc.errno is None and reader.count < e.size:
                        raise changed from exc
                    raise
                if reader.count != e.size or f.read(1) or reader.sha256.hexdigest() != e.sha256:
                    raise changed


# --------------------------------------------------------------------------- reading


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's clean relative path, or ArchiveError if it could escape or is not plain.

    A directory member for the root itself (``./``, as ``tar czf x -C dir .`` writes)
    is returned as ``"."``: it names the extraction directory and creates nothing.
    """
    name = member.name
    if member.isdir() and PurePosixPath(name).as_posix() == ".":
        return "."
    reason = _unsafe(name)
    if reason is not None:
        raise ArchiveError(f"pytest-ckpts: refusing {reason} in archive: {name!r}")
    if member.issym() or member.islnk():
        raise ArchiveError(
            f"pytest-ckpts: refusing link in archive: {name!r} -> {member.linkname!r} "
            "(checkpoint archives hold regular files and directories only)"
        )
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(
            f"pytest-ckpts: refusing special member (device, FIFO or other) in archive: {name!r}"
        )
    return PurePosixPath(name).as_posix()


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and schema-check MANIFEST.json so later lookups cannot crash on bad input."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ArchiveError(f"pytest-ckpts: {where}: unreadable {MANIFEST_NAME}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(
            f"pytest-ckpts: {where}: {MANIFEST_NAME} is not format_version {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ArchiveError(f"pytest-ckpts: {where}: {MANIFEST_NAME} has no 'files' list")
    seen: set[str] = set()
    for entry in files:
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and type(entry.get("size")) is int
            and entry["size"] >= 0
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"]) is not None
        )
        if not ok:
            raise ArchiveError(
                f"pytest-ckpts: {where}: malformed entry in {MANIFEST_NAME}: {entry!r} "
                "(needs path, size >= 0 and a lowercase hex sha256)"
            )
        if entry["path"] in seen:
            raise ArchiveError(
                f"pytest-ckpts: {where}: {entry['path']!r} listed twice in {MANIFEST_NAME}"
            )
        seen.add(entry["path"])
    if manifest.get("file_count") != len(files):
        raise ArchiveError(
            f"pytest-ckpts: {where}: {MANIFEST_NAME} file_count {manifest.get('file_count')!r} "
            f"!= {len(files)} files listed"
        )
    if manifest.get("total_size") not in (None, sum(f["size"] for f in files)):
        raise ArchiveError(
            f"pytest-ckpts: {where}: {MANIFEST_NAME} total_size {manifest.get('total_size')!r} "
            "!= the sum of the listed sizes"
        )
    return manifest


def _compare(manifest: dict[str, Any], seen: dict[str, tuple[int, str]], where: str) -> None:
    """Every listed file present with matching size and sha256, and nothing extra."""
    listed = {f["path"]: f for f in manifest["files"]}
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
    if problems:
        raise ArchiveError(
            f"pytest-ckpts: {where} failed verification:\n  " + "\n  ".join(problems)
        )


def _walk(path: Path, sink: Path | None) -> dict[str, Any]:
    """Stream through the archive once, hashing files (and writing them under ``sink``).

    Every member is checked for safety before anything is written for it. When
    ``MANIFEST.json`` comes first (as :func:`create_archive` writes it), an unlisted
    member or a size mismatch is refused before its data is written; archives with the
    manifest elsewhere are still accepted and checked at the end.
    """
    where = str(path)
    if not path.is_file():
        raise ArchiveError(f"pytest-ckpts: archive {path} does not exist or is not a file")
    seen: dict[str, tuple[int, str]] = {}
    manifest: dict[str, Any] | None = None
    listed: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    try:
        with _open_gzip(path) as gz, tarfile.open(fileobj=gz, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                name = _member_name(member)
                if name in names:
                    raise ArchiveError(f"pytest-ckpts: {where}: duplicate member {name!r}")
                names.add(name)
                if name == ".":
                    continue
                if member.isdir():
                    if sink is not None:
                        (sink / name).mkdir(parents=True, exist_ok=True)
                    continue
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover - regular files always have a reader
                    raise ArchiveError(f"pytest-ckpts: {where}: cannot read member {name!r}")
                if name == MANIFEST_NAME:
                    manifest = _parse_manifest(f.read(), where)
                    listed = {e["path"]: e for e in manifest["files"]}
                    continue
                if manifest is not None:
                    expected = listed.get(name)
                    if expected is None:
                        raise ArchiveError(
                            f"pytest-ckpts: {where} failed verification: "
                            f"{name}: in the archive but not listed in {MANIFEST_NAME}"
                        )
                    if expected["size"] != member.size:
                        raise ArchiveError(
                            f"pytest-ckpts: {where} failed verification: {name}: expected "
                            f"{expected['size']} bytes, archive member has {member.size}"
                        )
                seen[name] = _copy_member(f, sink / name if sink is not None else None, member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"pytest-ckpts: {where} is not a readable .tar.gz: {exc}") from None
    if manifest is None:
        raise ArchiveError(
            f"pytest-ckpts: {where} has no {MANIFEST_NAME}; it was not made by "
            "pytest_ckpts.archive.create_archive"
        )
    _compare(manifest, seen, where)
    return manifest


def _copy_member(f: IO[bytes], target: Path | None, member: tarfile.TarInfo) -> tuple[int, str]:
    """Hash one member's data, writing it to ``target`` when extracting."""
    digest = hashlib.sha256()
    size = 0
    out = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("xb")  # never follow or overwrite anything already there
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
    return size, digest.hexdigest()


def verify_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every member against ``MANIFEST.json``; return the manifest or raise ``ArchiveError``.

    Checks run in one streaming pass: member safety (as :func:`extract_archive`), every
    listed file present with its size and sha256, and no member that is not listed.
    Use it before uploading or trusting an archive you did not just build.
    """
    return _walk(Path(path), None)


def extract_archive(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a verified archive into ``dest`` (absent or empty), all or nothing.

    Members are written into a temporary directory beside ``dest`` and checked
    against the manifest; only then is the directory renamed into place, so ``dest``
    holds exactly the archived tree or is left as it was. ``MANIFEST.json`` is checked,
    not written, so ``dest`` matches the original checkpoint directory. Unsafe members
    (absolute paths, ``..``, symlinks, hard links, devices, FIFOs) are refused even when
    the manifest lists them.
    """
    archive = Path(path)
    target = Path(os.path.abspath(dest))  # so "." or "dir/" still has a parent and a name
    if target.is_symlink():
        raise ArchiveError(
            f"pytest-ckpts: extraction target {target} is a symlink; name a real directory"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(
            f"pytest-ckpts: extraction target {target} exists and is not an empty directory"
        )
    made_dirs: list[Path] = []
    staging: Path | None = None
    try:
        made_dirs = _make_parents(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
        _walk(archive, staging)
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
