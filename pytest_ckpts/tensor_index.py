"""The tensor index of a ``.safetensors`` checkpoint: ``checkpoints/tensors/<name>.json``.

``pytest-ckpts lock --tensors NAME`` reads the whole file once and records the sha256 of
its header bytes and of each tensor's bytes, with absolute offsets; the manifest entry
records the index file's own sha256 as ``tensor_index``. :mod:`pytest_ckpts.partial`
checks every byte it hands out against it (docs/partial.md "The chain of trust").

The safetensors layout: an 8-byte little-endian length ``N``, ``N`` bytes of JSON
(name -> dtype, shape, data_offsets relative to byte ``8 + N``), then the tensor bytes.
A header is checked as safetensors itself checks it (``read_metadata`` and
``Metadata::validate`` in safetensors/src/tensor.rs): at most 100 MB, UTF-8 JSON, a
``__metadata__`` of strings, each tensor's size that of its dtype and shape, the
tensors laid end to end from byte ``8 + N`` (no overlap, no hole) to the end of the file.

Headers are checked in :mod:`pytest_ckpts._st_header`. Memory stays within a few times
the header's size: an index in the layout ``lock`` writes is read from its bytes, any
other JSON a member at a time, a row kept as its name, two offsets in arrays and 32
bytes of digest; an index is written as a stream.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ._st_header import (
    FAST_ROW,
    MAX_HEADER,
    MAX_OFFSET,
    Header,
    TensorEntry,
    document,
    members,
    parse_header,
    value,
)
from .errors import TensorIndexError
from .integrity import SHA256_RE
from .manifest import CheckpointSpec, Manifest

__all__ = [
    "FORMAT_VERSION",
    "Header",
    "IndexBuild",
    "Piece",
    "TensorEntry",
    "TensorIndex",
    "build",
    "build_index",
    "index_path",
    "load_index",
    "parse_header",
    "relative_label",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Piece:
    """A byte range ``[begin, end)`` of the file with the sha256 of its bytes."""

    label: str  # tensor name, or "" for the header
    sha256: str
    begin: int
    end: int


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True, eq=False)
class TensorIndex:
    """``checkpoints/tensors/<name>.json``, validated: names sorted, each once."""

    path: Path
    file_sha256: str
    header_sha256: str
    names: list[str]
    begins: array[int]
    ends: array[int]
    shas: bytes  # 32 bytes per tensor, in ``names`` order
    header_end: int  # the first tensor's begin: the header is [0, header_end)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def find(self, name: str) -> int | None:
        i = bisect.bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else None

    def piece(self, name: str) -> Piece:
        i = self.find(name)
        if i is None:
            raise KeyError(name)
        sha = self.shas[32 * i : 32 * i + 32].hex()
        return Piece(name, sha, self.begins[i], self.ends[i])

    @property
    def header(self) -> Piece:
        """The header range: everything before the first tensor's bytes."""
        return Piece("", self.header_sha256, 0, self.header_end)

    def disagreement(self, header: Header, asked: Sequence[str]) -> str | None:
        """Why this index does not describe the file ``header`` heads, or None.

        The tensors asked for first (the likeliest to name), then every other one.
        """
        for name in asked:
            entry, i = header.entries.get(name), self.find(name)
            if entry is None:
                return f"the header has no tensor '{name}'"
            if i is not None and (self.begins[i], self.ends[i]) != (entry.begin, entry.end):
                return (
                    f"the index places tensor '{name}' at bytes [{self.begins[i]}, "
                    f"{self.ends[i]}), the header at [{entry.begin}, {entry.end})"
                )
        seen = bytearray(len(self.names))
        for name, b, e in zip(header.names, header.begins, header.ends, strict=True):
            i = self.find(name)
            if i is None:
                return f"the header names tensor '{name}', the index does not"
            if seen[i]:
                return f"the header names tensor '{name}' twice"
            seen[i] = 1
            if (self.begins[i], self.ends[i]) != (b, e):
                return (
                    f"the index places tensor '{name}' at bytes [{self.begins[i]}, "
                    f"{self.ends[i]}), the header at [{b}, {e})"
                )
        if len(header.names) != len(self.names):
            return f"the index names tensor '{self.names[seen.index(0)]}', the header does not"
        return None


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
    box = [raw]  # _parse_index drops the bytes once decoded (a copy less at the peak)
    del raw
    index = _parse_index(box, path, label, spec.name, fix)
    if spec.sha256 is not None and index.file_sha256 != spec.sha256:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} was made from a file with sha256 "
            f"{index.file_sha256}, but checkpoint '{spec.name}' now has sha256 {spec.sha256}; "
            f"{fix}"
        )
    return index


class _Rows:
    """An index's rows as they are read: names (sorted, once each), offsets, digests."""

    def __init__(self, bad: Callable[[str], TensorIndexError]) -> None:
        self.bad = bad
        self.names: list[str] = []
        self.begins: array[int] = array("q")
        self.ends: array[int] = array("q")
        self.shas = bytearray()

    def add(self, tname: str, t: Any) -> None:
        ok = isinstance(t, dict) and isinstance(t.get("sha256"), str)
        ok = ok and bool(SHA256_RE.match(t["sha256"]))
        ok = ok and all(type(t.get(k)) is int for k in ("begin", "end"))
        if not ok or not 8 <= t["begin"] <= t["end"] <= MAX_OFFSET:
            raise self.bad(f"has a bad entry for tensor '{tname}' (sha256, 8 <= begin <= end)")
        if self.names and tname <= self.names[-1]:
            raise self.bad(
                f"names tensor '{tname}' twice or out of order (lock writes each once, sorted)"
            )
        self.names.append(tname)
        self.begins.append(t["begin"])
        self.ends.append(t["end"])
        self.shas.extend(bytes.fromhex(t["sha256"]))


_B_INT = rb"(0|[1-9][0-9]{0,18})"
#: the layout ``lock --tensors`` writes, matched on the bytes (no decoded copy)
_CANON_HEAD = re.compile(
    rb'\{\n "file_sha256": "([0-9a-f]{64})",\n "format_version": ' + _B_INT
    + rb',\n "header_sha256": "([0-9a-f]{64})",\n "tensors": \{'
)  # fmt: skip
_CANON_ROW = re.compile(
    rb'\n  "((?:[^"\\\x00-\x1f]|\\["\\/bfnrtu])*)": \{\n   "begin": ' + _B_INT
    + rb',\n   "end": ' + _B_INT + rb',\n   "sha256": "([0-9a-f]{64})"\n  \}(,?)'
)  # fmt: skip


def _canonical(raw: bytes, rows: _Rows) -> dict[str, Any] | None:
    """The top-level fields of an index in the exact layout ``lock`` writes, its rows
    added to ``rows``; None (rows untouched or to be discarded) for any other layout."""
    head = _CANON_HEAD.match(raw)
    if head is None:
        return None
    pos = head.end()
    if raw[pos:] == b"}\n}\n":  # no tensors
        pos = len(raw)
    while pos < len(raw):
        m = _CANON_ROW.match(raw, pos)
        if m is None:
            return None
        name = m[1].decode("utf-8") if b"\\" not in m[1] else json.loads(b'"' + m[1] + b'"')
        rows.add(name, {"begin": int(m[2]), "end": int(m[3]), "sha256": m[4].decode()})
        pos = m.end()
        if not m[5]:
            if raw[pos:] != b"\n }\n}\n":
                return None
            break
    return {
        "file_sha256": head[1].decode(),
        "format_version": int(head[2]),
        "header_sha256": head[3].decode(),
        "tensors": True,
    }


def _parse_index(box: list[bytes], path: Path, label: str, name: str, fix: str) -> TensorIndex:
    """The index whose bytes ``box`` holds (taken out of it: freed once decoded)."""

    def bad(why: str) -> TensorIndexError:
        return TensorIndexError(f"pytest-ckpts: tensor index {label} of '{name}' {why}; {fix}")

    raw = box.pop()
    rows = _Rows(bad)
    top = _canonical(raw, rows)
    if top is None:
        rows = _Rows(bad)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = ""  # refused below as "not JSON"
        del raw
        top = _walk_index(text, rows, bad)
    else:
        del raw
    if top.get("format_version") != FORMAT_VERSION:
        raise bad(f"is not format_version {FORMAT_VERSION}")
    sums = (top.get("file_sha256"), top.get("header_sha256"))
    if not all(isinstance(s, str) and SHA256_RE.match(s) for s in sums):
        raise bad("lacks file_sha256 / header_sha256 (64 hex digits)")
    if top.get("tensors") is not True:
        raise bad("has no 'tensors' mapping")
    header_end = min(rows.begins, default=8)
    if header_end - 8 > MAX_HEADER:
        raise bad(
            f"puts the first tensor at byte {header_end}: a safetensors header is at most "
            f"{MAX_HEADER} bytes"
        )
    return TensorIndex(
        path, str(sums[0]), str(sums[1]), rows.names, rows.begins, rows.ends, bytes(rows.shas),
        header_end,
    )  # fmt: skip


def _walk_index(text: str, rows: _Rows, bad: Callable[[str], TensorIndexError]) -> dict[str, Any]:
    """Any other JSON layout of an index, a member at a time."""
    top: dict[str, Any] = {}

    def row(tname: str, text: str, i: int) -> int:
        t, end = value(text, i)
        rows.add(tname, t)
        return end

    def fast(text: str, i: int) -> tuple[int, bool] | None:
        m = FAST_ROW.match(text, i)
        if m is None:
            return None
        rows.add(m[1], {"begin": int(m[2]), "end": int(m[3]), "sha256": m[4]})
        return m.end(), m[5] == "}"

    def member(key: str, text: str, i: int) -> int:
        if key in top:
            raise bad(f"has '{key}' twice")
        if key == "tensors":
            top[key] = text[i : i + 1] == "{"
            return members(text, i, row, fast) if top[key] else value(text, i)[1]
        top[key], end = value(text, i)
        return end

    try:
        if not document(text, member):
            raise bad("is not a JSON object")
    except RecursionError:
        raise bad("is nested too deeply") from None
    except TensorIndexError:
        raise
    except ValueError as exc:
        raise bad(f"is not JSON ({exc})") from None
    return top


# --------------------------------------------------------------------------- building


@dataclass(eq=False)
class IndexBuild:
    """A checked, hashed ``.safetensors``: :meth:`write` streams its index."""

    file_sha256: str
    header_sha256: str
    header: Header
    shas: bytearray  # 32 bytes per tensor, in header order

    @property
    def count(self) -> int:
        return len(self.header.names)

    def write(self, out: Callable[[bytes], object]) -> None:
        """Canonical JSON, byte for byte ``json.dumps(doc, indent=1, sort_keys=True)``
        and a newline: the same file always gives the same bytes (and tensor_index)."""
        h = self.header
        out(
            b'{\n "file_sha256": "%s",\n "format_version": %d,\n "header_sha256": "%s",\n'
            b' "tensors": '
            % (self.file_sha256.encode(), FORMAT_VERSION, self.header_sha256.encode())
        )
        if not h.names:
            out(b"{}\n}\n")
            return
        out(b"{\n")
        for k, i in enumerate(sorted(range(len(h.names)), key=h.names.__getitem__)):
            out(
                b'%s  %s: {\n   "begin": %d,\n   "end": %d,\n   "sha256": "%s"\n  }'
                % (
                    b",\n" if k else b"",
                    json.dumps(h.names[i]).encode("ascii"),
                    h.begins[i],
                    h.ends[i],
                    self.shas[32 * i : 32 * i + 32].hex().encode(),
                )
            )
        out(b"\n }\n}\n")


def _hash_range(f: BinaryIO, begin: int, end: int) -> bytes:
    digest = hashlib.sha256()
    f.seek(begin)
    left = end - begin
    while left > 0:
        chunk = f.read(min(left, 4 << 20))
        if not chunk:
            raise TensorIndexError(f"file ends before byte {end}")
        digest.update(chunk)
        left -= len(chunk)
    return digest.digest()


def build(path: Path, file_sha256: str) -> IndexBuild:
    """Check the local ``.safetensors`` ``path`` (already verified as ``file_sha256``) as
    safetensors does and hash its header and tensors; one-line TensorIndexError if bad."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise TensorIndexError(
                f"{path} is not a .safetensors file (no header of a sane length)"
            )
        raw = head + f.read(n)
        header_sha256 = hashlib.sha256(raw).hexdigest()
        header = parse_header(raw, str(path))
        del raw
        if header.data_end != size:
            raise TensorIndexError(
                f"{path}: tensor data_offsets do not lie within the file: the tensors end "
                f"at byte {header.data_end}, the file has {size} bytes (safetensors refuses it)"
            )
        names = header.names
        by_name = sorted(range(len(names)), key=names.__getitem__)
        for a, b in itertools.pairwise(by_name):
            if names[a] == names[b]:
                raise TensorIndexError(f"{path}: the header names tensor '{names[a]}' twice")
        del by_name
        shas = bytearray(32 * len(names))
        for i in header.file_order():
            shas[32 * i : 32 * i + 32] = _hash_range(f, header.begins[i], header.ends[i])
    return IndexBuild(file_sha256, header_sha256, header, shas)


def build_index(path: Path, file_sha256: str) -> bytes:
    """The index of a local ``.safetensors`` as bytes (see :func:`build`)."""
    out = io.BytesIO()
    build(path, file_sha256).write(out.write)
    return out.getvalue()
