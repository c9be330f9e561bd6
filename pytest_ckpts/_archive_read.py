"""Reading side of :mod:`pytest_ckpts.archive`: one streaming pass that checks everything.

``verify_archive`` and ``extract_archive`` share this pass, so an archive that
verifies is exactly one that extracts: the same member rules, the same manifest
checks and the same one-line reasons. Data moves in big zero-copy slices from the
decompressing thread of :class:`~pytest_ckpts._tarstream.TarGzReader`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from ._tarstream import HeaderSource, TarGzReader
from .errors import ArchiveError, DecompressError

#: Name of the manifest member, always first in archives we write.
MANIFEST_NAME = "MANIFEST.json"
#: ``format_version`` written to, and required in, ``MANIFEST.json``.
FORMAT_VERSION = 1
#: Largest ``MANIFEST.json`` accepted when reading: it is parsed in memory. Each
#: listed file takes about 150 bytes, so this allows some 400,000 files.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REBUILD = "rebuild it with pytest_ckpts.archive.create_archive or get an intact copy"


def unsafe(name: str) -> str | None:
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


def member_name(member: tarfile.TarInfo, where: str) -> str:
    """The member's clean relative path, or ArchiveError if it could escape or is not plain.

    A directory member for the root itself (``./``, as ``tar czf x -C dir .`` writes)
    is returned as ``"."``: it names the extraction directory and creates nothing.
    """
    name = member.name
    if member.isdir() and PurePosixPath(name).as_posix() == ".":
        return "."
    reason = unsafe(name)
    if reason is not None:
        raise ArchiveError(
            f"pytest-ckpts: {where}: refusing {reason} in member {name!r}; "
            "do not extract this archive"
        )
    if member.issym() or member.islnk():
        raise ArchiveError(
            f"pytest-ckpts: {where}: refusing link member {name!r} -> {member.linkname!r}; "
            "checkpoint archives hold regular files and directories only, "
            "so copy the target in and rebuild the archive"
        )
    if not (member.isfile() or member.isdir()) or member.sparse is not None:
        raise ArchiveError(
            f"pytest-ckpts: {where}: refusing special member (device, FIFO, sparse or other) "
            f"{name!r}; checkpoint archives hold regular files and directories only"
        )
    return PurePosixPath(name).as_posix()


def _short(value: object, limit: int = 120) -> str:
    """``repr`` cut to ``limit`` characters: a hostile manifest must not flood the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and schema-check MANIFEST.json so later lookups cannot crash on bad input."""
    bad = f"pytest-ckpts: {where}: member {MANIFEST_NAME}"
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ArchiveError(f"{bad} is not valid UTF-8 JSON ({exc}); {_REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(
            f"{bad} is not format_version {FORMAT_VERSION}; it was not written by "
            "pytest_ckpts.archive.create_archive (or by a newer version: upgrade pytest-ckpts)"
        )
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ArchiveError(f"{bad} has no 'files' list; {_REBUILD}")
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
                f"{bad} has a malformed entry {_short(entry)} (needs path, size >= 0 and a "
                f"lowercase hex sha256); {_REBUILD}"
            )
        if entry["path"] in seen:
            raise ArchiveError(f"{bad} lists {_short(entry['path'])} twice; {_REBUILD}")
        seen.add(entry["path"])
    if manifest.get("file_count") != len(files):
        raise ArchiveError(
            f"{bad} says file_count {_short(manifest.get('file_count'))} but lists "
            f"{len(files)} files; {_REBUILD}"
        )
    if manifest.get("total_size") not in (None, sum(f["size"] for f in files)):
        raise ArchiveError(
            f"{bad} says total_size {_short(manifest.get('total_size'))}, not the sum of the "
            f"listed sizes; {_REBUILD}"
        )
    return manifest


def compare(manifest: dict[str, Any], seen: dict[str, tuple[int, str]], where: str) -> None:
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
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ArchiveError(
            f"pytest-ckpts: {where} failed verification: {'; '.join(problems[:3])}{more}; "
            + _REBUILD
        )


class Limits:
    """How much an extraction may write: ``max_bytes`` and the free space of dest's disk.

    Checked against the manifest's declared sizes before any file is written, and
    against the running total of member sizes (each before its data is written), so
    neither a lying manifest nor an archive without one up front can fill the disk.
    """

    def __init__(self, max_bytes: int | None, dest: Path, free: int) -> None:
        self.max_bytes = max_bytes
        self.dest = dest
        self.free = free
        self.written = 0

    def check(self, amount: int, where: str, what: str) -> None:
        if self.max_bytes is not None and amount > self.max_bytes:
            raise ArchiveError(
                f"pytest-ckpts: {where}: {what} {amount} bytes, over "
                f"extract_archive(max_bytes={self.max_bytes}); pass a larger max_bytes "
                "if you trust this archive"
            )
        if amount > self.free:
            raise ArchiveError(
                f"pytest-ckpts: {where}: {what} {amount} bytes but the filesystem of "
                f"{self.dest} has only {self.free} bytes free; free some space or extract "
                "elsewhere"
            )


class Walk:
    """State of one streaming pass over an archive (see :func:`walk`)."""

    def __init__(self, where: str, sink: Path | None, limits: Limits | None) -> None:
        self.where = where
        self.sink = sink
        self.limits = limits
        self.seen: dict[str, tuple[int, str]] = {}
        self.manifest: dict[str, Any] | None = None
        self.listed: dict[str, dict[str, Any]] = {}
        self.names: set[str] = set()
        self.files: set[str] = set()
        self.implied_dirs: dict[str, str] = {}  # ancestor path -> first member inside it

    def claim(self, name: str, is_file: bool) -> None:
        """Refuse duplicates and paths used both as a file and as a directory.

        ``a`` (a file) plus ``a/b`` cannot both be extracted; checking here makes
        ``verify_archive`` refuse what ``extract_archive`` could not write.
        """
        where = self.where
        if name in self.names:
            raise ArchiveError(f"pytest-ckpts: {where}: duplicate member {name!r}; {_REBUILD}")
        self.names.add(name)
        parents = [p.as_posix() for p in PurePosixPath(name).parents][:-1]  # drop "."
        for parent in parents:
            if parent in self.files:
                raise ArchiveError(
                    f"pytest-ckpts: {where}: member {name!r} lies inside {parent!r}, which "
                    f"is a file in this archive; {_REBUILD}"
                )
        if is_file:
            if name in self.implied_dirs:
                raise ArchiveError(
                    f"pytest-ckpts: {where}: member {self.implied_dirs[name]!r} lies inside "
                    f"{name!r}, which is a file in this archive; {_REBUILD}"
                )
            self.files.add(name)
        for parent in parents:
            self.implied_dirs.setdefault(parent, name)

    def member(self, reader: TarGzReader, member: tarfile.TarInfo) -> None:
        name = member_name(member, self.where)
        if name == ".":
            return
        self.claim(name, member.isfile())
        if member.isdir():
            if self.sink is not None:
                (self.sink / name).mkdir(parents=True, exist_ok=True)
            return
        if name == MANIFEST_NAME:
            self.read_manifest(reader, member.size)
            return
        where = self.where
        if self.manifest is not None:
            expected = self.listed.get(name)
            if expected is None:
                raise ArchiveError(
                    f"pytest-ckpts: {where} failed verification: {name}: in the archive but "
                    f"not listed in {MANIFEST_NAME}; {_REBUILD}"
                )
            if expected["size"] != member.size:
                raise ArchiveError(
                    f"pytest-ckpts: {where} failed verification: {name}: expected "
                    f"{expected['size']} bytes, archive member has {member.size}; {_REBUILD}"
                )
        if self.limits is not None:  # before a single byte of this member is written
            self.limits.check(
                self.limits.written + member.size, where, f"member {name!r} brings the data to"
            )
            self.limits.written += member.size
        self.seen[name] = self.copy(reader, member, name)

    def read_manifest(self, reader: TarGzReader, size: int) -> None:
        limit = MAX_MANIFEST_BYTES
        if size > limit:
            raise ArchiveError(
                f"pytest-ckpts: {self.where}: member {MANIFEST_NAME} is {size} bytes, over the "
                f"{limit // 2**20} MiB limit for a manifest; {_REBUILD}"
            )
        raw = b"".join(bytes(c) for c in reader.chunks(size))
        reader.skip_padding()
        self.manifest = parse_manifest(raw, self.where)
        self.listed = {e["path"]: e for e in self.manifest["files"]}
        if self.limits is not None:
            declared = sum(e["size"] for e in self.manifest["files"])
            self.limits.check(declared, self.where, f"{MANIFEST_NAME} declares")

    def copy(self, reader: TarGzReader, member: tarfile.TarInfo, name: str) -> tuple[int, str]:
        """Hash one member's data in big zero-copy slices, writing it when extracting."""
        digest = hashlib.sha256()
        if self.sink is None:
            for chunk in reader.chunks(member.size):
                digest.update(chunk)
        else:
            target = self.sink / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb", buffering=0) as out:  # never follow or overwrite
                for chunk in reader.chunks(member.size):
                    digest.update(chunk)
                    out.write(chunk)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
        reader.skip_padding()
        return member.size, digest.hexdigest()


def walk(path: Path, sink: Path | None, limits: Limits | None = None) -> dict[str, Any]:
    """Stream through the archive once, hashing files (and writing them under ``sink``).

    Every member is checked for safety before anything is written for it. When
    ``MANIFEST.json`` comes first (as :func:`create_archive` writes it), an unlisted
    member, a size mismatch or a total over ``limits`` is refused before its data is
    written; archives with the manifest elsewhere are still accepted and checked at
    the end (``limits`` still caps what they can write).
    """
    where = str(path)
    if not path.is_file():
        raise ArchiveError(f"pytest-ckpts: archive {path} does not exist or is not a file")
    walk = Walk(where, sink, limits)
    try:
        reader = TarGzReader(path)
    except OSError as exc:
        raise ArchiveError(f"pytest-ckpts: cannot read archive {where}: {exc}") from None
    try:
        headers = HeaderSource(reader)
        while (member := headers.next()) is not None:
            walk.member(reader, member)
    except (tarfile.TarError, EOFError, DecompressError) as exc:
        raise ArchiveError(
            f"pytest-ckpts: {where} is not a readable .tar.gz ({exc}); {_REBUILD}"
        ) from None
    finally:
        reader.close()
    if walk.manifest is None:
        raise ArchiveError(
            f"pytest-ckpts: {where} has no {MANIFEST_NAME}; it was not made by "
            "pytest_ckpts.archive.create_archive, so it cannot be verified"
        )
    compare(walk.manifest, walk.seen, where)
    return walk.manifest
