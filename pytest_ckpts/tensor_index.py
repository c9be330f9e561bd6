"""The tensor index of a ``.safetensors`` checkpoint: ``checkpoints/tensors/<name>.json``.

``pytest-ckpts lock --tensors NAME`` reads the whole file once and records the sha256 of
its header bytes and of each tensor's bytes, with absolute offsets; the manifest entry
records the index file's own sha256 as ``tensor_index``. :mod:`pytest_ckpts.partial`
checks every byte it hands out against it (docs/partial.md "The chain of trust").

The safetensors layout: an 8-byte little-endian length ``N``, ``N`` bytes of JSON
(name -> dtype, shape, data_offsets relative to byte ``8 + N``), then the tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import TensorIndexError
from .integrity import SHA256_RE
from .manifest import CheckpointSpec, Manifest

__all__ = [
    "FORMAT_VERSION",
    "ITEMSIZE",
    "Piece",
    "TensorEntry",
    "TensorIndex",
    "build_index",
    "index_path",
    "load_index",
    "parse_header",
    "relative_label",
]

FORMAT_VERSION = 1
#: safetensors itself refuses headers above 100 MB; so do we (bounded memory on bad input)
MAX_HEADER = 100_000_000

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
    "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class Piece:
    """A byte range ``[begin, end)`` of the file with the sha256 of its bytes."""

    label: str  # tensor name, or "" for the header
    sha256: str
    begin: int
    end: int


@dataclass(frozen=True)
class TensorIndex:
    """``checkpoints/tensors/<name>.json``, validated."""

    path: Path
    file_sha256: str
    header_sha256: str
    tensors: dict[str, Piece]

    @property
    def header(self) -> Piece:
        """The header range: everything before the first tensor's bytes."""
        start = min((p.begin for p in self.tensors.values()), default=0)
        return Piece("", self.header_sha256, 0, start)


def index_path(manifest: Manifest, name: str) -> Path:
    """``<manifest dir>/tensors/<name>.json`` (names are validated by the manifest)."""
    return manifest.path.parent / "tensors" / f"{name}.json"


def relative_label(manifest: Manifest, path: Path) -> str:
    try:
        return str(path.relative_to(manifest.root))
    except ValueError:
        return str(path)


def load_index(manifest: Manifest, spec: CheckpointSpec) -> TensorIndex:
    """The entry's tensor index, checked against the manifest; one-line errors."""
    path = index_path(manifest, spec.name)
    label = relative_label(manifest, path)
    fix = f"run `pytest-ckpts lock --tensors {spec.name}`"
    recorded = getattr(spec, "tensor_index", None)
    if recorded is None:
        raise TensorIndexError(
            f"pytest-ckpts: checkpoint '{spec.name}' has no tensor_index in {manifest.path}, "
            f"so its tensors cannot be read without the whole file: {fix} (and commit {label})"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} of checkpoint '{spec.name}' cannot be read "
            f"({exc.strerror or exc}); {fix} and commit it beside the manifest"
        ) from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != recorded:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} of checkpoint '{spec.name}' has sha256 "
            f"{actual}, the manifest's tensor_index is {recorded}: the file was edited or "
            f"the manifest is out of date; {fix}"
        )
    index = _parse_index(raw, path, label, spec.name, fix)
    if spec.sha256 is not None and index.file_sha256 != spec.sha256:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} was made from a file with sha256 "
            f"{index.file_sha256}, but checkpoint '{spec.name}' now has sha256 {spec.sha256}; "
            f"{fix}"
        )
    return index


def _parse_index(raw: bytes, path: Path, label: str, name: str, fix: str) -> TensorIndex:
    def bad(why: str) -> TensorIndexError:
        return TensorIndexError(f"pytest-ckpts: tensor index {label} of '{name}' {why}; {fix}")

    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise bad(f"is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        raise bad(f"is not format_version {FORMAT_VERSION}")
    sums = (doc.get("file_sha256"), doc.get("header_sha256"))
    if not all(isinstance(s, str) and SHA256_RE.match(s) for s in sums):
        raise bad("lacks file_sha256 / header_sha256 (64 hex digits)")
    tensors: dict[str, Piece] = {}
    items = doc.get("tensors")
    if not isinstance(items, dict):
        raise bad("has no 'tensors' mapping")
    for tname, t in items.items():
        ok = isinstance(t, dict) and isinstance(t.get("sha256"), str)
        ok = ok and bool(SHA256_RE.match(t["sha256"]))
        ok = ok and all(type(t.get(k)) is int for k in ("begin", "end"))
        if not ok or not 8 <= t["begin"] <= t["end"]:
            raise bad(f"has a bad entry for tensor '{tname}' (sha256, begin <= end)")
        tensors[tname] = Piece(tname, t["sha256"], t["begin"], t["end"])
    return TensorIndex(path, str(sums[0]), str(sums[1]), tensors)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute
    end: int


def parse_header(header: bytes, where: str) -> dict[str, TensorEntry]:
    """The tensors a safetensors header names, with absolute offsets; ValueError if bad."""
    if len(header) < 8:
        raise ValueError(f"{where}: shorter than the 8-byte safetensors header length")
    n = int.from_bytes(header[:8], "little")
    if n > MAX_HEADER or len(header) != 8 + n:
        raise ValueError(f"{where}: a safetensors header of {n} bytes does not fit")
    try:
        meta = json.loads(header[8:])
    except ValueError as exc:
        raise ValueError(f"{where}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: the safetensors header is not a JSON object")
    out: dict[str, TensorEntry] = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            ok = dtype in ITEMSIZE and all(type(d) is int and d >= 0 for d in shape)
            ok = ok and type(b) is int and type(e) is int and 0 <= b <= e
            ok = ok and e - b == count * ITEMSIZE[dtype]
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{where}: tensor '{name}' has a bad dtype, shape or data_offsets")
        out[name] = TensorEntry(dtype, tuple(shape), 8 + n + b, 8 + n + e)
    return out


def _hash_range(f: BinaryIO, begin: int, end: int) -> str:
    digest = hashlib.sha256()
    f.seek(begin)
    left = end - begin
    while left > 0:
        chunk = f.read(min(left, 4 << 20))
        if not chunk:
            raise ValueError(f"file ends before byte {end}")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def build_index(path: Path, file_sha256: str) -> bytes:
    """The index of a local ``.safetensors`` (already verified as ``file_sha256``).

    Canonical JSON (sorted keys, fixed indent, final newline): the same file always
    gives the same bytes, so the ``tensor_index`` in the manifest is reproducible.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise ValueError(f"{path} is not a .safetensors file (no header of a sane length)")
        header = head + f.read(n)
        tensors = parse_header(header, str(path))
        first = min((t.begin for t in tensors.values()), default=8 + n)
        if first != 8 + n or any(t.end > size for t in tensors.values()):
            raise ValueError(f"{path}: tensor data_offsets do not lie within the file")
        rows = {
            name: {"sha256": _hash_range(f, t.begin, t.end), "begin": t.begin, "end": t.end}
            for name, t in tensors.items()
        }
    doc = {
        "format_version": FORMAT_VERSION,
        "file_sha256": file_sha256,
        "header_sha256": hashlib.sha256(header).hexdigest(),
        "tensors": rows,
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")
