"""Where the bytes of a partial read come from (:mod:`pytest_ckpts.partial`), and the
one-line errors about them.

A source hands out verified pieces (byte ranges of the file, by sha256): a verified
whole file in the cache (:class:`FromFile`), pieces cached at a commit that cannot be
fetched again now, offline or with the hub down (:class:`FromCache`), or cached pieces
and the rest by HTTP ``Range`` from the hub, then kept (:class:`FromHub`). Pieces live
under :meth:`Cache.piece_path`, are fetched once across processes under a per-piece
lock, and are re-hashed when read back; a piece of the wrong size is never read.
A source never decides what to ask for: :mod:`pytest_ckpts.partial` asks for the
header first and only then for tensors whose ranges the header confirmed.
This module knows nothing of pytest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CacheError, ChecksumMismatchError, TensorIndexError
from .integrity import atomic_write_bytes
from .manifest import CheckpointSpec, Manifest, is_pinned
from .tensor_index import Piece, TensorIndex, relative_label

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "HEADER_PROBE",
    "MAX_MERGED",
    "MERGE_GAP",
    "FromCache",
    "FromFile",
    "FromHub",
    "Source",
    "cached_commit",
    "not_this_file",
]

logger = logging.getLogger("pytest_ckpts")

#: ranges closer than this are fetched in one request (the gap is read and dropped)
MERGE_GAP = 64 * 1024
#: a merged request stays below this size (memory), unless one tensor alone is larger
MAX_MERGED = 64 * 1024 * 1024
#: a header longer than this is fetched in two requests: the length field in the first
#: must agree with the index before the rest is asked for
HEADER_PROBE = 64 * 1024


@dataclass
class Source:
    """Verified pieces of ``spec`` (by sha256), from one place."""

    store: Store
    spec: CheckpointSpec
    index: TensorIndex

    @property
    def size(self) -> int | None:
        """The whole file's size, when known (checked against the header)."""
        return None

    def where(self, piece: Piece) -> str:
        raise NotImplementedError

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        raise NotImplementedError


@dataclass
class FromFile(Source):
    """A verified whole file in the cache: ranges read from it, each re-hashed."""

    path: Path

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size

    def where(self, piece: Piece) -> str:
        return f"bytes {piece.begin}-{piece.end - 1} of {self.path}"

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        out = {}
        with self.path.open("rb") as f:
            for p in pieces:
                f.seek(p.begin)
                data = f.read(p.end - p.begin)
                actual = hashlib.sha256(data).hexdigest()
                if actual != p.sha256:
                    raise local_mismatch(
                        self.store.manifest, self.spec, self.index, p,
                        f"cached copy, {self.where(p)}", actual,
                        f"the cache was modified: `pytest-ckpts verify {self.spec.name}`",
                    )  # fmt: skip
                out[p.sha256] = data
        return out


@dataclass
class FromCache(Source):
    """Pieces cached at ``commit`` that cannot be fetched again now (``why``: offline,
    the hub is down): a bad one is one line naming it and the fix."""

    commit: str
    why: str

    @property
    def size(self) -> int | None:
        return read_size(self.store, self.spec, self.commit)

    def where(self, piece: Piece) -> str:
        return f"cached piece {self.store.layout.piece_path(self.spec, self.commit, piece.sha256)}"

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        return {p.sha256: self._piece(p) for p in pieces}

    def _piece(self, piece: Piece) -> bytes:
        path = self.store.layout.piece_path(self.spec, self.commit, piece.sha256)
        data = _read_piece(path, piece)
        actual = hashlib.sha256(data).hexdigest() if data is not None else "(wrong size)"
        if data is not None and actual == piece.sha256:
            return data
        if _remove(path):
            fix = "the bad piece was removed; read once online to fetch that range again"
        else:
            fix = (
                "the cache is read-only: remove that file where the cache is writable, or "
                "read online (the range is then read from the hub again and not kept)"
            )
        where = f"cached copy {path}; {self.why}"
        raise local_mismatch(self.store.manifest, self.spec, self.index, piece, where, actual, fix)


@dataclass
class FromHub(Source):
    """Cached pieces at ``commit``; the rest by ``Range`` from the hub, verified, kept
    (where the cache is writable). ``nbytes`` and ``requests`` count the transfers."""

    commit: str
    merge_gap: int = MERGE_GAP
    nbytes: int = 0
    requests: int = 0
    known_size: int | None = None

    @property
    def size(self) -> int | None:
        if self.known_size is None:
            self.known_size = read_size(self.store, self.spec, self.commit)
        return self.known_size

    def where(self, piece: Piece) -> str:
        hub = self.store.hub.describe(self.spec, self.commit)
        return f"bytes {piece.begin}-{piece.end - 1} from {hub}"

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        store, spec, commit = self.store, self.spec, self.commit
        got: dict[str, bytes] = {}
        missing = _load_cached(store, spec, commit, pieces, got)
        if missing:
            if is_pinned(spec.revision) and store.mirror_set is None:
                store.hub.probe(spec)  # one short probe per run says "is the hub there"
            with _piece_locks(store, spec, commit, missing):
                missing = _load_cached(store, spec, commit, missing, got)  # others' work
                for group in _groups(missing, self.merge_gap):
                    self._fetch_group(group, got)
        return got

    def _range(self, begin: int, end: int) -> bytes:
        ranged = self.store.hub.read_range(self.spec, self.commit, begin, end)
        self.nbytes += len(ranged.data)
        self.requests += 1
        self.known_size = ranged.size
        _write_size(self.store, self.spec, self.commit, ranged.size)
        return ranged.data

    def _header(self, end: int) -> bytes:
        """A long header in two requests: its length field must be the index's first."""
        first = self._range(0, HEADER_PROBE)
        length = 8 + int.from_bytes(first[:8], "little")
        if length != end:
            why = f"its header is {length} bytes long, the index says {end}"
            where = f"bytes 0-{HEADER_PROBE - 1} from {self.store.hub.describe(self.spec)}"
            raise not_this_file(self.store.manifest, self.spec, self.index, where, why)
        return first + self._range(HEADER_PROBE, end)

    def _fetch_group(self, group: list[Piece], got: dict[str, bytes]) -> None:
        store, spec = self.store, self.spec
        begin, end = group[0].begin, max(p.end for p in group)
        where = f"bytes {begin}-{end - 1} from {store.hub.describe(spec, self.commit)}"
        mirrored = self._from_mirror(group, begin, end) if end > begin else None
        if mirrored is not None:
            body, where = mirrored
        elif group == [self.index.header] and end > HEADER_PROBE:
            body = self._header(end)
        else:
            body = self._range(begin, end) if end > begin else b""  # empty tensors: nothing
        for p in sorted(group, key=lambda p: p.label != ""):  # the header first
            data = verified(
                store.manifest, spec, self.index, p, body[p.begin - begin : p.end - begin], where
            )
            got[p.sha256] = data
            path = store.layout.piece_path(spec, self.commit, p.sha256)
            try:
                atomic_write_bytes(path, data)
            except OSError as exc:  # read-only cache: the bytes are verified all the same
                logger.debug("pytest-ckpts: cannot keep piece %s: %s", path, exc)

    def _from_mirror(self, group: list[Piece], begin: int, end: int) -> tuple[bytes, str] | None:
        """Bytes ``[begin, end)`` from the first mirror that has the file and serves the
        index's bytes (docs/mirrors.md); None: ask the hub."""
        mirrors = self.store.mirror_set
        found = mirrors.read_range(self.spec, begin, end) if mirrors is not None else None
        if found is None:
            return None
        body, mirror = found
        if any(
            hashlib.sha256(body[p.begin - begin : p.end - begin]).hexdigest() != p.sha256
            for p in group
        ):
            logger.warning(
                "pytest-ckpts: mirror %s served bytes %d-%d of '%s' that do not match its "
                "tensor index; reading them from the hub",
                mirror.label,
                begin,
                end - 1,
                self.spec.name,
            )
            return None
        self.nbytes += len(body)
        self.requests += 1
        return body, f"bytes {begin}-{end - 1} from mirror {mirror.label}"


# --------------------------------------------------------------------------- the piece cache


def cached_commit(store: Store, spec: CheckpointSpec, pieces: list[Piece]) -> str | None:
    """The commit (a pinned one, else the most recent) with all ``pieces`` cached."""
    layout = store.layout
    commits = [spec.revision] if is_pinned(spec.revision) else layout.piece_commits(spec)
    for commit in commits:
        if all(layout.piece_path(spec, commit, p.sha256).is_file() for p in pieces):
            return commit
    return None


def _load_cached(
    store: Store, spec: CheckpointSpec, commit: str, pieces: list[Piece], out: dict[str, bytes]
) -> list[Piece]:
    """Put verified cached pieces in ``out``; drop corrupted copies (where the cache is
    writable; a read-only one keeps them, and the range is read again); return the rest."""
    missing = []
    for p in pieces:
        if p.sha256 in out:
            continue
        path = store.layout.piece_path(spec, commit, p.sha256)
        data = _read_piece(path, p)
        if data is not None and hashlib.sha256(data).hexdigest() == p.sha256:
            out[p.sha256] = data
            continue
        if data is not None or path.exists():
            logger.warning("pytest-ckpts: cached piece %s is corrupted; reading again", path)
            _remove(path)
        missing.append(p)
    return missing


def _read_piece(path: Path, piece: Piece) -> bytes | None:
    """The bytes of a cached piece, or None when absent or of the wrong size (a piece
    grown on disk is never read into memory)."""
    try:
        if path.stat().st_size != piece.end - piece.begin:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _remove(path: Path) -> bool:
    """Remove a bad cached piece; False where the cache is read-only."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.debug("pytest-ckpts: cannot remove %s: %s", path, exc)
        return False
    return True


def _groups(pieces: list[Piece], merge_gap: int) -> Iterator[list[Piece]]:
    """Pieces in file order, neighbours (gap <= ``merge_gap``) merged into one request."""
    group: list[Piece] = []
    for p in sorted({p.sha256: p for p in pieces}.values(), key=lambda p: p.begin):
        if group and (p.begin - group[-1].end > merge_gap or p.end - group[0].begin > MAX_MERGED):
            yield group
            group = []
        group.append(p)
    if group:
        yield group


@contextmanager
def _piece_locks(
    store: Store, spec: CheckpointSpec, commit: str, pieces: list[Piece]
) -> Iterator[None]:
    """One lock per piece, taken in one global order (no two processes deadlock)."""
    paths = sorted({store.layout.piece_lock_path(spec, commit, p.sha256) for p in pieces})
    with ExitStack() as stack:
        for lock_path in paths:
            stack.enter_context(store.cache_lock(lock_path, spec, f"read tensors of '{spec.name}'"))
        yield


def _size_path(store: Store, spec: CheckpointSpec, commit: str) -> Path:
    return store.layout.pieces_dir(spec, commit) / "size"


def _write_size(store: Store, spec: CheckpointSpec, commit: str, size: int) -> None:
    try:
        path = _size_path(store, spec, commit)
        if not path.is_file():
            atomic_write_bytes(path, str(size).encode())
    except (OSError, CacheError):
        pass


def read_size(store: Store, spec: CheckpointSpec, commit: str) -> int | None:
    """The file's size noted beside its pieces at ``commit``, if any."""
    try:
        return int(_size_path(store, spec, commit).read_text().strip())
    except (OSError, ValueError, CacheError):
        return None


# --------------------------------------------------------------------------- errors


def not_this_file(
    manifest: Manifest, spec: CheckpointSpec, index: TensorIndex, where: str, why: str
) -> TensorIndexError:
    """The index does not describe the file served: one line, nothing more is read."""
    return TensorIndexError(
        f"pytest-ckpts: tensor index {relative_label(manifest, index.path)} does not "
        f"describe the file of checkpoint '{spec.name}' ({where}): {why}; re-run "
        f"`pytest-ckpts lock --tensors {spec.name}`"
    )


def local_mismatch(
    manifest: Manifest,
    spec: CheckpointSpec,
    index: TensorIndex,
    piece: Piece,
    where: str,
    actual: str,
    fix: str,
) -> ChecksumMismatchError:
    """Cached bytes that are not the index's: one line naming the piece and the fix."""
    what = f"tensor '{piece.label}'" if piece.label else "the header"
    return ChecksumMismatchError(
        f"pytest-ckpts: Checksum mismatch for {what} of checkpoint '{spec.name}' ({where}): "
        f"sha256 {actual}, the tensor index {relative_label(manifest, index.path)} records "
        f"{piece.sha256}; {fix}",
        name=spec.name,
        path=where,
        expected=piece.sha256,
        actual=actual,
    )


def verified(
    manifest: Manifest,
    spec: CheckpointSpec,
    index: TensorIndex,
    piece: Piece,
    data: bytes,
    where: str,
) -> bytes:
    """``data`` from the hub if its sha256 is the index's; else why not, in one error.

    A header that does not match means the hub serves another file (the index is
    stale); anything else is a checksum mismatch of that tensor.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual == piece.sha256:
        return data
    label = relative_label(manifest, index.path)
    if not piece.label:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} of checkpoint '{spec.name}' is stale: the "
            f"header served ({where}) has sha256 {actual}, the index recorded "
            f"{piece.sha256}; re-run `pytest-ckpts lock --tensors {spec.name}`"
        )
    raise ChecksumMismatchError(
        name=spec.name,
        path=where,
        what=f"tensor '{piece.label}' of checkpoint '{spec.name}' ({where})",
        expected=piece.sha256,
        recorded_by=f"tensor index {label}",
        actual=actual,
        note=(
            "The bytes were not kept. If the file changed on purpose, update the "
            f"manifest (`pytest-ckpts lock --update {spec.name}`) and the index "
            f"(`pytest-ckpts lock --tensors {spec.name}`)."
        ),
    )
