"""Verified tensors of a ``.safetensors`` file, read by HTTP ``Range`` (README "Reading a
few tensors of a huge checkpoint").

Every byte handed out is checked against the entry's tensor index
(:mod:`pytest_ckpts.tensor_index`, written by ``pytest-ckpts lock --tensors NAME``).

A read: the header range (checked against ``header_sha256``: a mismatch means the hub
serves another file, the index is stale), then the requested tensors' ranges, adjacent
ones merged into one request, each checked against its sha256. Verified ranges
("pieces") are kept in the cache under their sha256 (:meth:`Cache.piece_path`), fetched
once across processes under a per-piece lock, and re-hashed when read back. A verified
whole file in the cache is read instead of the hub. HTTP goes through
:meth:`HubClient.read_range` and so follows the run's retry policy; offline means
cached pieces only; a branch whose hub is down falls back to pieces cached at an
earlier commit (reported ``stale``), as :mod:`pytest_ckpts.store` does for files.
This module knows nothing of pytest.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    CacheError,
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    TensorIndexError,
)
from .integrity import atomic_write_bytes
from .manifest import CheckpointSpec, Manifest, is_pinned
from .tensor_index import (
    Header,
    Piece,
    TensorEntry,
    TensorIndex,
    load_index,
    parse_header,
    relative_label,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = ["MERGE_GAP", "Partial", "PartialReader", "to_tensor"]

logger = logging.getLogger("pytest_ckpts")

#: ranges closer than this are fetched in one request (the gap is read and dropped)
MERGE_GAP = 64 * 1024
#: a merged request stays below this size (memory), unless one tensor alone is larger
MAX_MERGED = 64 * 1024 * 1024
#: a header longer than this is fetched in two requests: the length field in the first
#: must agree with the index before the rest is asked for
HEADER_PROBE = 64 * 1024

_TORCH_DTYPE = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
    "U64": "uint64", "F64": "float64",
}  # fmt: skip


# --------------------------------------------------------------------------- tensors


def to_tensor(data: bytes, entry: TensorEntry) -> Any:
    """A torch tensor (writable, its own memory) from verified little-endian bytes."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            'reading tensors needs torch: pip install "pytest-ckpts[torch]"'
        ) from None
    dtype = getattr(torch, _TORCH_DTYPE[entry.dtype], None)
    if dtype is None:  # pragma: no cover - older torch without the unsigned types
        raise TypeError(f"this torch has no dtype for safetensors {entry.dtype}")
    if not data:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(entry.shape)


# --------------------------------------------------------------------------- reading


@dataclass
class Partial:
    """What one read handed out and how: for the summary and the JSON report."""

    name: str
    tensors: dict[str, Any]
    source: str  # downloaded | cached | stale
    commit: str | None
    nbytes: int = 0  # transferred by this read
    seconds: float = 0.0
    size: int | None = None  # of the whole file, when known
    requests: int = 0
    reason: str | None = None  # why stale (returned, never written into the store)


@dataclass
class PartialReader:
    """Reads verified tensors for a :class:`~pytest_ckpts.store.Store` (same cache, hub,
    offline flag, lock timeout, retry budget and run state)."""

    store: Store
    merge_gap: int = MERGE_GAP

    def read(self, spec: CheckpointSpec, tensor_names: Sequence[str]) -> Partial:
        """Verified tensors ``tensor_names`` of ``spec``, fetching only what is missing.

        The header comes first, from wherever the read is served; every range of the
        index is checked against it before a tensor's bytes are asked for.
        """
        started = time.perf_counter()
        index = load_index(self.store.manifest, spec)
        if isinstance(tensor_names, str):  # read(name, "embed") means one tensor, not five
            tensor_names = [tensor_names]
        names = list(dict.fromkeys(tensor_names))
        self._check_names(spec, index, names)
        wanted = [index.piece(n) for n in names]
        out = Partial(spec.name, {}, "cached", None, size=spec.size)
        header, got = self._read_pieces(spec, index, names, wanted, out)
        for n, piece in zip(names, wanted, strict=True):
            out.tensors[n] = to_tensor(got[piece.sha256], header.entries[n])
        out.seconds = time.perf_counter() - started
        return out

    def _check_names(self, spec: CheckpointSpec, index: TensorIndex, names: list[str]) -> None:
        unknown = [n for n in names if n not in index]
        if not unknown:
            return
        import difflib

        candidates = index.names if len(index) <= 50_000 else []  # bounded time
        close = difflib.get_close_matches(unknown[0], candidates, n=3)
        hint = f" Did you mean: {', '.join(map(repr, close))}?" if close else ""
        raise TensorIndexError(
            f"pytest-ckpts: checkpoint '{spec.name}' has no tensor "
            f"{', '.join(map(repr, unknown))} ({len(index)} in "
            f"{relative_label(self.store.manifest, index.path)}).{hint}"
        )

    # ---------------------------------------------------------------- where from
    def _read_pieces(
        self,
        spec: CheckpointSpec,
        index: TensorIndex,
        names: list[str],
        wanted: list[Piece],
        out: Partial,
    ) -> tuple[Header, dict[str, bytes]]:
        store = self.store
        whole = store.cached_path(spec)
        if whole is not None and store.is_trusted(spec):
            out.commit, out.size = store.cached_commit(spec), whole.stat().st_size
            return self._in_two_steps(_FromFile(self, spec, index, whole), names, wanted)
        if store.offline:
            commit = self._cached_commit(spec, [index.header, *wanted])
            if commit is None:
                raise CheckpointSkipped(
                    f"pytest-ckpts: tensors of checkpoint '{spec.name}' are not cached in "
                    f"{store.cache} and the mode is offline (no downloads). Read them "
                    "once online (the cache keeps them), or use --ckpts=auto."
                )
            out.commit = commit
            return self._from_cache(spec, index, commit, names, wanted, out, "offline")
        try:
            commit = spec.revision if is_pinned(spec.revision) else store.probe(spec)
            out.commit = commit
            hub = _FromHub(self, spec, index, commit, out)
            result = self._in_two_steps(hub, names, wanted)
            out.source = "downloaded" if out.nbytes else "cached"
            out.size = hub.size or out.size
            return result
        except CheckpointDownloadError as exc:
            if is_pinned(spec.revision) or not exc.hub_down:
                raise
            commit = self._cached_commit(spec, [index.header, *wanted])
            if commit is None:
                raise
            cause = str(exc).splitlines()[0].removeprefix("pytest-ckpts: ")
            reason = f"stale: tensors read at commit {commit[:12]}; hub failed: {cause}"
            logger.warning("pytest-ckpts: using stale tensors of '%s' (%s)", spec.name, reason)
            out.source, out.commit, out.reason = "stale", commit, reason
            return self._from_cache(spec, index, commit, names, wanted, out, "the hub is down")

    def _from_cache(
        self,
        spec: CheckpointSpec,
        index: TensorIndex,
        commit: str,
        names: list[str],
        wanted: list[Piece],
        out: Partial,
        why: str,
    ) -> tuple[Header, dict[str, bytes]]:
        source = _FromCache(self, spec, index, commit, why)
        out.size = source.size or out.size
        return self._in_two_steps(source, names, wanted)

    def _in_two_steps(
        self, source: _Source, names: list[str], wanted: list[Piece]
    ) -> tuple[Header, dict[str, bytes]]:
        """The verified header, checked against every range of the index; then the
        tensors (whose ranges are now the header's own)."""
        index = source.index
        raw = source.get([index.header])[index.header.sha256]
        header = self._check_header(source, names, raw)
        del raw
        return header, source.get(wanted)

    def _check_header(self, source: _Source, names: list[str], raw: bytes) -> Header:
        spec, index = source.spec, source.index
        try:
            header = parse_header(raw, "its header", want=names)
            why = index.disagreement(header, names)
        except TensorIndexError as exc:
            why = str(exc)
        else:
            if why is None and source.size is not None and header.data_end != source.size:
                why = (
                    f"the header's tensors end at byte {header.data_end}, the file has "
                    f"{source.size} bytes"
                )
        if why is None:
            return header
        raise _not_this_file(self.store.manifest, spec, index, source.where(index.header), why)

    def _cached_commit(self, spec: CheckpointSpec, pieces: list[Piece]) -> str | None:
        layout = self.store.layout
        commits = [spec.revision] if is_pinned(spec.revision) else layout.piece_commits(spec)
        for commit in commits:
            if all(layout.piece_path(spec, commit, p.sha256).is_file() for p in pieces):
                return commit
        return None

    # ---------------------------------------------------------------- cached pieces
    def _load_cached(
        self,
        spec: CheckpointSpec,
        commit: str,
        pieces: list[Piece],
        out: dict[str, bytes],
    ) -> list[Piece]:
        """Put verified cached pieces in ``out``; drop corrupted copies (where the cache
        is writable; a read-only one keeps them, and the range is read again); return
        the rest."""
        missing = []
        for p in pieces:
            if p.sha256 in out:
                continue
            path = self.store.layout.piece_path(spec, commit, p.sha256)
            data = _read_piece(path, p)
            if data is not None and hashlib.sha256(data).hexdigest() == p.sha256:
                out[p.sha256] = data
                continue
            if data is not None or path.exists():
                logger.warning("pytest-ckpts: cached piece %s is corrupted; reading again", path)
                _remove(path)
            missing.append(p)
        return missing

    def _local_piece(
        self, spec: CheckpointSpec, index: TensorIndex, piece: Piece, commit: str, why: str
    ) -> bytes:
        """A cached piece that cannot be fetched again now: its bytes, or one line."""
        path = self.store.layout.piece_path(spec, commit, piece.sha256)
        data = _read_piece(path, piece)
        actual = hashlib.sha256(data).hexdigest() if data is not None else "(wrong size)"
        if actual == piece.sha256:
            assert data is not None
            return data
        if _remove(path):
            fix = "the bad piece was removed; read once online to fetch that range again"
        else:
            fix = (
                "the cache is read-only: remove that file where the cache is writable, or "
                "read online (the range is then read from the hub again and not kept)"
            )
        raise _local_mismatch(
            self.store.manifest, spec, index, piece, f"cached copy {path}; {why}", actual, fix
        )

    # ---------------------------------------------------------------- fetch
    def _groups(self, pieces: list[Piece]) -> Iterator[list[Piece]]:
        """Pieces in file order, neighbours (gap <= ``merge_gap``) merged into one request."""
        group: list[Piece] = []
        for p in sorted({p.sha256: p for p in pieces}.values(), key=lambda p: p.begin):
            if group and (
                p.begin - group[-1].end > self.merge_gap or p.end - group[0].begin > MAX_MERGED
            ):
                yield group
                group = []
            group.append(p)
        if group:
            yield group

    @contextmanager
    def _locks(self, spec: CheckpointSpec, commit: str, pieces: list[Piece]) -> Iterator[None]:
        """One lock per piece, taken in one global order (no two processes deadlock)."""
        from filelock import FileLock, Timeout

        layout = self.store.layout
        paths = sorted({layout.piece_lock_path(spec, commit, p.sha256) for p in pieces})
        with ExitStack() as stack:
            for lock_path in paths:
                try:
                    lock_path.parent.mkdir(parents=True, exist_ok=True)
                    lock = FileLock(str(lock_path), timeout=self.store.lock_timeout)
                    lock.acquire()
                except Timeout:
                    raise CheckpointDownloadError(
                        f"pytest-ckpts: timed out after {self.store.lock_timeout:.0f}s waiting "
                        f"for another process to read tensors of '{spec.name}' (lock "
                        f"{lock_path}). If no other process is running, delete the lock file.",
                        name=spec.name,
                    ) from None
                except OSError as exc:  # read-only cache: nothing is written, no lock needed
                    logger.debug("pytest-ckpts: no lock %s: %s", lock_path, exc)
                    continue
                stack.callback(lock.release)
            yield

    def _size_path(self, spec: CheckpointSpec, commit: str) -> Path:
        return self.store.layout.pieces_dir(spec, commit) / "size"

    def _write_size(self, spec: CheckpointSpec, commit: str, size: int) -> None:
        try:
            path = self._size_path(spec, commit)
            if not path.is_file():
                atomic_write_bytes(path, str(size).encode())
        except (OSError, CacheError):
            pass

    def _read_size(self, spec: CheckpointSpec, commit: str) -> int | None:
        try:
            return int(self._size_path(spec, commit).read_text().strip())
        except (OSError, ValueError, CacheError):
            return None


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """Where one read's bytes come from: ``get`` returns verified pieces by sha256."""

    reader: PartialReader
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
class _FromFile(_Source):
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
                    raise _local_mismatch(
                        self.reader.store.manifest, self.spec, self.index, p,
                        f"cached copy, {self.where(p)}", actual,
                        f"the cache was modified: `pytest-ckpts verify {self.spec.name}`",
                    )  # fmt: skip
                out[p.sha256] = data
        return out


@dataclass
class _FromCache(_Source):
    """Pieces cached at ``commit`` that cannot be fetched again now (offline, hub down)."""

    commit: str
    why: str

    @property
    def size(self) -> int | None:
        return self.reader._read_size(self.spec, self.commit)

    def where(self, piece: Piece) -> str:
        path = self.reader.store.layout.piece_path(self.spec, self.commit, piece.sha256)
        return f"cached piece {path}"

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        return {
            p.sha256: self.reader._local_piece(self.spec, self.index, p, self.commit, self.why)
            for p in pieces
        }


@dataclass
class _FromHub(_Source):
    """Cached pieces at ``commit``, the rest by ``Range`` from the hub (then kept)."""

    commit: str
    out: Partial
    known_size: int | None = None

    @property
    def size(self) -> int | None:
        if self.known_size is None:
            self.known_size = self.reader._read_size(self.spec, self.commit)
        return self.known_size

    def where(self, piece: Piece) -> str:
        hub = self.reader.store.describe(self.spec, self.commit)
        return f"bytes {piece.begin}-{piece.end - 1} from {hub}"

    def get(self, pieces: list[Piece]) -> dict[str, bytes]:
        reader, spec, commit = self.reader, self.spec, self.commit
        got: dict[str, bytes] = {}
        missing = reader._load_cached(spec, commit, pieces, got)
        if missing:
            if is_pinned(spec.revision):  # one short probe per run says "is the hub there"
                reader.store.probe(spec)
            with reader._locks(spec, commit, missing):
                missing = reader._load_cached(spec, commit, missing, got)  # others' work
                for group in reader._groups(missing):
                    self._fetch_group(group, got)
        return got

    def _range(self, begin: int, end: int) -> bytes:
        ranged = self.reader.store.hub.read_range(self.spec, self.commit, begin, end)
        self.out.nbytes += len(ranged.data)
        self.out.requests += 1
        self.known_size = ranged.size
        self.reader._write_size(self.spec, self.commit, ranged.size)
        return ranged.data

    def _header(self, end: int) -> bytes:
        """A long header in two requests: its length field must be the index's first."""
        first = self._range(0, HEADER_PROBE)
        length = 8 + int.from_bytes(first[:8], "little")
        if length != end:
            why = f"its header is {length} bytes long, the index says {end}"
            where = f"bytes 0-{HEADER_PROBE - 1} from {self.reader.store.describe(self.spec)}"
            raise _not_this_file(self.reader.store.manifest, self.spec, self.index, where, why)
        return first + self._range(HEADER_PROBE, end)

    def _fetch_group(self, group: list[Piece], got: dict[str, bytes]) -> None:
        reader, spec = self.reader, self.spec
        begin, end = group[0].begin, max(p.end for p in group)
        if group == [self.index.header] and end > HEADER_PROBE:
            body = self._header(end)
        else:
            body = self._range(begin, end) if end > begin else b""  # empty tensors: nothing
        where = f"bytes {begin}-{end - 1} from {reader.store.describe(spec, self.commit)}"
        for p in sorted(group, key=lambda p: p.label != ""):  # the header first
            data = _verified(
                reader.store.manifest, spec, self.index, p, body[p.begin - begin : p.end - begin],
                where,
            )  # fmt: skip
            got[p.sha256] = data
            path = reader.store.layout.piece_path(spec, self.commit, p.sha256)
            try:
                atomic_write_bytes(path, data)
            except OSError as exc:  # read-only cache: the bytes are verified all the same
                logger.debug("pytest-ckpts: cannot keep piece %s: %s", path, exc)


# --------------------------------------------------------------------------- helpers


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


def _not_this_file(
    manifest: Manifest, spec: CheckpointSpec, index: TensorIndex, where: str, why: str
) -> TensorIndexError:
    """The index does not describe the file served: one line, nothing more is read."""
    return TensorIndexError(
        f"pytest-ckpts: tensor index {relative_label(manifest, index.path)} does not "
        f"describe the file of checkpoint '{spec.name}' ({where}): {why}; re-run "
        f"`pytest-ckpts lock --tensors {spec.name}`"
    )


def _local_mismatch(
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


def _verified(
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
        f"pytest-ckpts: Checksum mismatch for tensor '{piece.label}' of checkpoint "
        f"'{spec.name}' ({where})\n"
        f"  expected sha256: {piece.sha256} (tensor index {label})\n"
        f"  actual sha256:   {actual}\n"
        "The bytes were not kept. If the file changed on purpose, update the "
        f"manifest (`pytest-ckpts lock --update {spec.name}`) and the index "
        f"(`pytest-ckpts lock --tensors {spec.name}`).",
        name=spec.name,
        path=where,
        expected=piece.sha256,
        actual=actual,
    )
