"""Verified tensors of a ``.safetensors`` file, read by HTTP ``Range`` (docs/how-to/big-checkpoints.md
"Reading a few tensors of a huge checkpoint").

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
    reason: str | None = None  # why stale


@dataclass
class PartialReader:
    """Reads verified tensors for a :class:`~pytest_ckpts.store.Store` (same cache, hub,
    offline flag, lock timeout, retry budget and run state)."""

    store: Store
    merge_gap: int = MERGE_GAP

    def read(self, spec: CheckpointSpec, tensor_names: Sequence[str]) -> Partial:
        """Verified tensors ``tensor_names`` of ``spec``, fetching only what is missing."""
        started = time.perf_counter()
        index = load_index(self.store.manifest, spec)
        if isinstance(tensor_names, str):  # read(name, "embed") means one tensor, not five
            tensor_names = [tensor_names]
        names = list(dict.fromkeys(tensor_names))
        unknown = [n for n in names if n not in index.tensors]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(index.tensors), n=3)
            hint = f" Did you mean: {', '.join(map(repr, close))}?" if close else ""
            raise TensorIndexError(
                f"pytest-ckpts: checkpoint '{spec.name}' has no tensor "
                f"{', '.join(map(repr, unknown))} ({len(index.tensors)} in "
                f"{relative_label(self.store.manifest, index.path)}).{hint}"
            )
        pieces = [index.header, *(index.tensors[n] for n in names)]
        out = Partial(spec.name, {}, "cached", None, size=spec.size)
        result = self._read_pieces(spec, index, pieces, out)
        header = parse_header(result.pop(index.header.sha256), f"header of '{spec.name}'")
        for n in names:
            piece = index.tensors[n]
            entry = header.get(n)
            if entry is None or (entry.begin, entry.end) != (piece.begin, piece.end):
                raise TensorIndexError(
                    f"pytest-ckpts: tensor index {relative_label(self.store.manifest, index.path)} "
                    f"places tensor '{n}' elsewhere than the verified header of "
                    f"'{spec.name}' does; run `pytest-ckpts lock --tensors {spec.name}`"
                )
            out.tensors[n] = to_tensor(result[piece.sha256], entry)
        out.seconds = time.perf_counter() - started
        return out

    # ---------------------------------------------------------------- where from
    def _read_pieces(
        self, spec: CheckpointSpec, index: TensorIndex, pieces: list[Piece], out: Partial
    ) -> dict[str, bytes]:
        whole = self.store.cached_path(spec)
        if whole is not None and self.store.is_trusted(spec):
            out.commit, out.size = self.store.cached_commit(spec), whole.stat().st_size
            return self._from_file(spec, index, whole, pieces)
        if self.store.offline:
            commit = self._cached_commit(spec, pieces)
            if commit is None:
                raise CheckpointSkipped(
                    f"pytest-ckpts: tensors of checkpoint '{spec.name}' are not cached in "
                    f"{self.store.cache} and the mode is offline (no downloads). Read them "
                    "once online (the cache keeps them), or use --ckpts=auto."
                )
            out.commit = commit
            return self._cached(spec, index, commit, pieces, out)
        try:
            commit = spec.revision if is_pinned(spec.revision) else self.store.probe(spec)
            out.commit = commit
            return self._fetch(spec, index, commit, pieces, out)
        except CheckpointDownloadError as exc:
            if is_pinned(spec.revision) or not exc.hub_down:
                raise
            commit = self._cached_commit(spec, pieces)
            if commit is None:
                raise
            cause = str(exc).splitlines()[0].removeprefix("pytest-ckpts: ")
            reason = f"stale: tensors read at commit {commit[:12]}; hub failed: {cause}"
            self.store.stale_reasons[spec.name] = reason
            logger.warning("pytest-ckpts: using stale tensors of '%s' (%s)", spec.name, reason)
            out.source, out.commit, out.reason = "stale", commit, reason
            return self._cached(spec, index, commit, pieces, out)

    def _cached_commit(self, spec: CheckpointSpec, pieces: list[Piece]) -> str | None:
        layout = self.store.layout
        commits = [spec.revision] if is_pinned(spec.revision) else layout.piece_commits(spec)
        for commit in commits:
            if all(layout.piece_path(spec, commit, p.sha256).is_file() for p in pieces):
                return commit
        return None

    def _cached(
        self,
        spec: CheckpointSpec,
        index: TensorIndex,
        commit: str,
        pieces: list[Piece],
        out: Partial,
    ) -> dict[str, bytes]:
        got = {}
        for p in pieces:
            path = self.store.layout.piece_path(spec, commit, p.sha256)
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != p.sha256:
                path.unlink(missing_ok=True)  # the next online read fetches it again
            got[p.sha256] = _verified(
                self.store.manifest, spec, index, p, data, str(path), local=True
            )
        out.size = self._read_size(spec, commit) or out.size
        return got

    def _from_file(
        self, spec: CheckpointSpec, index: TensorIndex, path: Path, pieces: list[Piece]
    ) -> dict[str, bytes]:
        out = {}
        with path.open("rb") as f:
            for p in pieces:
                f.seek(p.begin)
                data = f.read(p.end - p.begin)
                out[p.sha256] = _verified(
                    self.store.manifest, spec, index, p, data, str(path), local=True
                )
        return out

    # ---------------------------------------------------------------- fetch
    def _fetch(
        self,
        spec: CheckpointSpec,
        index: TensorIndex,
        commit: str,
        pieces: list[Piece],
        out: Partial,
    ) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        missing = self._load_cached(spec, commit, pieces, got)
        if missing:
            if is_pinned(spec.revision):  # one short probe per run says "is the hub there"
                self.store.probe(spec)
            with self._locks(spec, commit, missing):
                missing = self._load_cached(spec, commit, missing, got)  # others' work
                for group in self._groups(missing):
                    self._fetch_group(spec, index, commit, group, got, out)
            out.source = "downloaded" if out.nbytes else "cached"
        if not out.nbytes:
            out.size = self._read_size(spec, commit) or out.size
        return got

    def _load_cached(
        self,
        spec: CheckpointSpec,
        commit: str,
        pieces: list[Piece],
        out: dict[str, bytes],
    ) -> list[Piece]:
        """Put verified cached pieces in ``out``; drop corrupted copies; return the rest."""
        missing = []
        for p in pieces:
            if p.sha256 in out:
                continue
            path = self.store.layout.piece_path(spec, commit, p.sha256)
            try:
                data = path.read_bytes()
            except OSError:
                missing.append(p)
                continue
            if hashlib.sha256(data).hexdigest() == p.sha256:
                out[p.sha256] = data
            else:
                logger.warning("pytest-ckpts: cached piece %s is corrupted; reading again", path)
                path.unlink(missing_ok=True)
                missing.append(p)
        return missing

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

    def _fetch_group(
        self,
        spec: CheckpointSpec,
        index: TensorIndex,
        commit: str,
        group: list[Piece],
        got: dict[str, bytes],
        out: Partial,
    ) -> None:
        begin, end = group[0].begin, max(p.end for p in group)
        body = b""
        if end > begin:  # else only empty tensors: nothing to ask for
            ranged = self.store.hub.read_range(spec, commit, begin, end)
            body = ranged.data
            out.nbytes += len(body)
            out.requests += 1
            out.size = ranged.size
            self._write_size(spec, commit, ranged.size)
        where = f"bytes {begin}-{end - 1} from {self.store.describe(spec, commit)}"
        for p in sorted(group, key=lambda p: p.label != ""):  # the header first
            data = _verified(
                self.store.manifest, spec, index, p, body[p.begin - begin : p.end - begin], where
            )
            got[p.sha256] = data
            path = self.store.layout.piece_path(spec, commit, p.sha256)
            try:
                atomic_write_bytes(path, data)
            except OSError as exc:  # read-only cache: the bytes are verified all the same
                logger.debug("pytest-ckpts: cannot keep piece %s: %s", path, exc)

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


def _verified(
    manifest: Manifest,
    spec: CheckpointSpec,
    index: TensorIndex,
    piece: Piece,
    data: bytes,
    where: str,
    *,
    local: bool = False,
) -> bytes:
    """``data`` if its sha256 is the index's; else why not, in one error.

    A header from the hub that does not match means the hub serves another file
    (the index is stale); anything else is a checksum mismatch of that tensor (or of
    a ``local`` copy: a cached piece or a cached whole file).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual == piece.sha256:
        return data
    label = relative_label(manifest, index.path)
    if not piece.label and not local:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} of checkpoint '{spec.name}' is stale: the "
            f"header served ({where}) has sha256 {actual}, the index recorded "
            f"{piece.sha256}; re-run `pytest-ckpts lock --tensors {spec.name}`"
        )
    what = f"tensor '{piece.label}'" if piece.label else "the header"
    raise ChecksumMismatchError(
        f"pytest-ckpts: Checksum mismatch for {what} of checkpoint '{spec.name}' "
        f"({'cached copy ' if local else ''}{where})\n"
        f"  expected sha256: {piece.sha256} (tensor index {label})\n"
        f"  actual sha256:   {actual}\n"
        + (
            "The cache was modified; the bad piece was removed (a cached whole file: "
            f"`pytest-ckpts verify {spec.name}`)."
            if local
            else "The bytes were not kept. If the file changed on purpose, update the "
            f"manifest (`pytest-ckpts lock --update {spec.name}`) and the index "
            f"(`pytest-ckpts lock --tensors {spec.name}`)."
        ),
        name=spec.name,
        path=where,
        expected=piece.sha256,
        actual=actual,
    )
