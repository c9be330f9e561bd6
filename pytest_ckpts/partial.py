"""Verified tensors of a ``.safetensors`` file, read by HTTP ``Range`` (docs/how-to/big-checkpoints.md
"Reading a few tensors of a huge checkpoint").

Every byte handed out is checked against the entry's tensor index
(:mod:`pytest_ckpts.tensor_index`, written by ``pytest-ckpts lock --tensors NAME``).

A read, in two steps: the header range alone (checked against ``header_sha256``: a
mismatch means the hub serves another file, the index is stale), parsed as safetensors
checks it, and every range of the index compared with it; only then the requested
tensors' ranges (now the header's own), adjacent ones merged into one request, each
checked against its sha256. So a lying index costs at most the header. Where the bytes
come from (a verified whole file, kept pieces, the hub) is :mod:`pytest_ckpts._pieces`.
Verified ranges ("pieces") are kept in the cache under their sha256
(:meth:`Cache.piece_path`), fetched once across processes under a per-piece lock, and
re-hashed when read back. HTTP goes through
:meth:`HubClient.read_range` and so follows the run's retry policy; offline means
cached pieces only; a branch whose hub is down falls back to pieces cached at an
earlier commit (reported ``stale``), as :mod:`pytest_ckpts.store` does for files.
This module knows nothing of pytest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._pieces import MERGE_GAP, FromCache, FromFile, FromHub, Source, cached_commit, not_this_file
from .errors import CheckpointDownloadError, CheckpointSkipped, Fix, TensorIndexError
from .manifest import CheckpointSpec, is_pinned
from .settings import Mode
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

__all__ = ["Partial", "PartialReader", "to_tensor"]

logger = logging.getLogger("pytest_ckpts")

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
        whole = store.layout.cached_path(spec)
        if whole is not None and store.is_trusted(spec):
            out.commit, out.size = store.layout.cached_commit(spec), whole.stat().st_size
            return self._in_two_steps(FromFile(store, spec, index, whole), names, wanted)
        if store.offline:
            commit = cached_commit(store, spec, [index.header, *wanted])
            if commit is None:
                fixes = (
                    Fix.say("read them once online (the cache keeps them)"),
                    Fix.set("mode", Mode.AUTO.value),
                )
                raise CheckpointSkipped.not_cached(
                    spec.name, store.layout.root, tensors=True, fixes=fixes
                )
            out.commit = commit
            return self._from_cache(spec, index, commit, names, wanted, out, "offline")
        try:
            commit = spec.revision if is_pinned(spec.revision) else store.hub.probe(spec)
            out.commit = commit
            hub = FromHub(store, spec, index, commit, self.merge_gap)
            try:
                return self._in_two_steps(hub, names, wanted)
            finally:
                out.nbytes, out.requests = hub.nbytes, hub.requests
                out.source = "downloaded" if hub.nbytes else "cached"
                out.size = hub.known_size or hub.size or out.size
        except CheckpointDownloadError as exc:
            if not store.may_serve_stale(spec, exc):
                raise
            commit = cached_commit(store, spec, [index.header, *wanted])
            if commit is None:
                raise
            reason = store.stale_reason(f"tensors read at commit {commit[:12]}", exc)
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
        source = FromCache(self.store, spec, index, commit, why)
        out.size = source.size or out.size
        return self._in_two_steps(source, names, wanted)

    def _in_two_steps(
        self, source: Source, names: list[str], wanted: list[Piece]
    ) -> tuple[Header, dict[str, bytes]]:
        """The verified header, checked against every range of the index; then the
        tensors (whose ranges are now the header's own)."""
        index = source.index
        size = source.size
        if size is not None and index.header.end > size:
            why = f"the index puts the first tensor at byte {index.header.end}, past its end"
            where = f"{size} bytes, {source.where(index.header)}"
            raise not_this_file(self.store.manifest, source.spec, index, where, why)
        raw = source.get([index.header])[index.header.sha256]
        header = self._check_header(source, names, raw)
        del raw
        return header, source.get(wanted)

    def _check_header(self, source: Source, names: list[str], raw: bytes) -> Header:
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
        raise not_this_file(self.store.manifest, spec, index, source.where(index.header), why)
