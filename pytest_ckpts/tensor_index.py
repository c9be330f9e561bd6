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

Memory stays within a few times the header's size, whatever it holds: headers and
indexes are walked one member at a time (never one Python dict per tensor), and a
tensor is kept as its name and two offsets in arrays; an index is written as a stream.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import re
from array import array
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # C or pure, always there
from pathlib import Path
from typing import Any, BinaryIO

from .errors import TensorIndexError
from .integrity import SHA256_RE
from .manifest import CheckpointSpec, Manifest

__all__ = [
    "FORMAT_VERSION",
    "ITEMSIZE",
    "MAX_HEADER",
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
#: safetensors' own limit (``MAX_HEADER_SIZE`` in safetensors/src/tensor.rs, 0.3 to 0.8)
MAX_HEADER = 100_000_000
#: offsets are u64 in safetensors and signed 64-bit here
_MAX_OFFSET = 2**63 - 1

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


# --------------------------------------------------------------------------- JSON, a member at a time

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: decodes the value of member ``key`` starting at ``text[i]``; returns where it ends
Member = Callable[[str, str, int], int]
#: reads one whole member and its separator at ``text[i]`` if it has the usual shape:
#: (where the next member starts, whether that closed the object), else None
Fast = Callable[[str, int], "tuple[int, bool] | None"]

_S = r"[ \t\n\r]*"
_NAME = r'"([^"\\\x00-\x1f]*)"' + _S + ":" + _S  # a name without escapes
_INT = r"(0|[1-9][0-9]{0,18})"
_INTS = r"((?:0|[1-9][0-9]{0,18})(?:,(?:0|[1-9][0-9]{0,18}))*)?"
_SEP = _S + "([,}])" + _S
#: a tensor as safetensors writes it (other spellings take the general path)
_FAST_TENSOR = re.compile(
    _NAME + r'\{"dtype":"([A-Z0-9_]{1,8})","shape":\[' + _INTS + r'\],"data_offsets":\['
    + _INT + "," + _INT + r"\]\}" + _SEP
)  # fmt: skip
#: an index row as ``lock --tensors`` writes it
_FAST_ROW = re.compile(
    _NAME + r"\{" + _S + r'"begin":' + _S + _INT + "," + _S + r'"end":' + _S + _INT + ","
    + _S + r'"sha256":' + _S + r'"([0-9a-f]{64})"' + _S + r"\}" + _SEP
)  # fmt: skip


def _ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _members(text: str, i: int, member: Member, fast: Fast | None = None) -> int:
    """Walk the JSON object at ``text[i]``, calling ``member`` once per member (or
    ``fast``, tried first); returns the end of the object. ValueError when it is not
    JSON (RecursionError: nested too deeply)."""
    if text[i : i + 1] != "{":
        raise ValueError(f"expected '{{' at char {i}")
    i = _ws(text, i + 1)
    if text[i : i + 1] == "}":
        return i + 1
    while True:
        done = fast(text, i) if fast is not None else None
        if done is not None:
            i, closed = done
            if closed:
                return i
            continue
        if text[i : i + 1] != '"':
            raise ValueError(f"expected a quoted name at char {i}")
        key, i = scanstring(text, i + 1, True)
        i = _ws(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at char {i}")
        i = _ws(text, member(key, text, _ws(text, i + 1)))
        if text[i : i + 1] == "}":
            return i + 1
        if text[i : i + 1] != ",":
            raise ValueError(f"expected ',' or '}}' at char {i}")
        i = _ws(text, i + 1)


def _document(text: str, member: Member, fast: Fast | None = None) -> bool:
    """Walk ``text``, one JSON object (whitespace around it allowed), with ``member``;
    False if it does not start as an object."""
    start = _ws(text, 0)
    if text[start : start + 1] != "{":
        return False
    end = _members(text, start, member, fast)
    if _ws(text, end) != len(text):
        raise ValueError(f"extra data after the JSON object at char {end}")
    return True


def _value(text: str, i: int) -> tuple[Any, int]:
    value, end = _DECODER.raw_decode(text, i)
    return value, end


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute
    end: int


@dataclass(eq=False)
class Header:
    """A checked safetensors header: each tensor's name and absolute ``[begin, end)``
    (in header order), dtype and shape of the tensors asked for (``entries``)."""

    length: int  # 8 + N: where the tensor data begins
    names: list[str] = field(default_factory=list)
    begins: array[int] = field(default_factory=lambda: array("q"))
    ends: array[int] = field(default_factory=lambda: array("q"))
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    data_end: int = 0  # where the last tensor ends: the size of the file

    def file_order(self) -> list[int]:
        """Positions sorted by ``(begin, end)``, as safetensors orders them."""
        order = sorted(range(len(self.names)), key=self.ends.__getitem__)
        order.sort(key=self.begins.__getitem__)
        return order


def parse_header(header: bytes, where: str, want: Collection[str] = ()) -> Header:
    """Check ``header`` (the length field and the JSON) as safetensors does; keep the
    dtype and shape of the tensors in ``want``. A one-line TensorIndexError if bad."""

    def bad(why: str) -> TensorIndexError:
        return TensorIndexError(f"{where}: {why}")

    if len(header) < 8:
        raise bad("shorter than the 8-byte safetensors header length")
    n = int.from_bytes(header[:8], "little")
    if n > MAX_HEADER:
        raise bad(f"a safetensors header of {n} bytes is over safetensors' limit ({MAX_HEADER})")
    if len(header) != 8 + n:
        raise bad(f"its length field says {n} bytes of header, the range holds {len(header) - 8}")
    try:
        text = str(memoryview(header)[8:], "utf-8")
    except UnicodeDecodeError:
        raise bad("the safetensors header is not UTF-8") from None
    out = Header(8 + n)
    wanted = set(want)

    def add(key: str, dtype: Any, shape: Any, offsets: Any) -> None:
        entry = _tensor_entry(dtype, shape, offsets, out.length)
        if entry is None:
            raise bad(f"tensor '{key}' has a bad dtype, shape or data_offsets")
        out.names.append(key)
        out.begins.append(entry.begin)
        out.ends.append(entry.end)
        if key in wanted:
            out.entries[key] = entry

    def fast(text: str, i: int) -> tuple[int, bool] | None:
        m = _FAST_TENSOR.match(text, i)
        if m is None or m[1] == "__metadata__":
            return None
        shape = [int(d) for d in m[3].split(",")] if m[3] else []
        add(m[1], m[2], shape, [int(m[4]), int(m[5])])
        return m.end(), m[6] == "}"

    def member(key: str, text: str, i: int) -> int:
        try:
            info, end = _value(text, i)
        except RecursionError:
            what = "__metadata__" if key == "__metadata__" else f"tensor '{key}'"
            raise bad(f"{what} is nested too deeply (safetensors refuses it)") from None
        if key == "__metadata__":
            if info is not None and not (
                isinstance(info, dict) and all(isinstance(v, str) for v in info.values())
            ):
                raise bad("__metadata__ is not a mapping of strings to strings")
            return end
        if not isinstance(info, dict):
            raise bad(f"tensor '{key}' has a bad dtype, shape or data_offsets")
        add(key, info.get("dtype"), info.get("shape"), info.get("data_offsets"))
        return end

    try:
        if not _document(text, member, fast):
            raise bad("the safetensors header is not a JSON object")
    except RecursionError:
        raise bad("the safetensors header is nested too deeply") from None
    except TensorIndexError:
        raise
    except ValueError as exc:
        raise bad(f"the safetensors header is not JSON ({exc})") from None
    start = out.length
    for i in out.file_order():
        if out.begins[i] != start:
            where_ = "overlaps the tensor before it" if out.begins[i] < start else "leaves a hole"
            raise bad(
                f"tensor '{out.names[i]}' {where_} (data_offsets [{out.begins[i] - out.length}, "
                f"{out.ends[i] - out.length}]); safetensors refuses such files"
            )
        start = out.ends[i]
    out.data_end = start
    return out


def _tensor_entry(dtype: Any, shape: Any, offsets: Any, base: int) -> TensorEntry | None:
    """The entry these values describe (offsets made absolute), or None if they are not
    one: a known dtype, a shape of naturals, 0 <= begin <= end, end - begin its size."""
    if not (isinstance(dtype, str) and dtype in ITEMSIZE and type(shape) is list):
        return None
    if not (type(offsets) is list and len(offsets) == 2):
        return None
    b, e = offsets
    if not (type(b) is int and type(e) is int and 0 <= b <= e <= _MAX_OFFSET - base):
        return None
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        count *= d
        if count > _MAX_OFFSET:  # safetensors: ValidationOverflow (and no quadratic time)
            return None
    if e - b != count * ITEMSIZE[dtype]:
        return None
    return TensorEntry(dtype, tuple(shape), base + b, base + e)


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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # refused below as "not JSON"
    del raw
    index = _parse_index(text, path, label, spec.name, fix)
    if spec.sha256 is not None and index.file_sha256 != spec.sha256:
        raise TensorIndexError(
            f"pytest-ckpts: tensor index {label} was made from a file with sha256 "
            f"{index.file_sha256}, but checkpoint '{spec.name}' now has sha256 {spec.sha256}; "
            f"{fix}"
        )
    return index


def _parse_index(text: str, path: Path, label: str, name: str, fix: str) -> TensorIndex:
    def bad(why: str) -> TensorIndexError:
        return TensorIndexError(f"pytest-ckpts: tensor index {label} of '{name}' {why}; {fix}")

    top: dict[str, Any] = {}
    names: list[str] = []
    begins, ends, shas = array("q"), array("q"), bytearray()

    def row(tname: str, text: str, i: int) -> int:
        t, end = _value(text, i)
        add(tname, t)
        return end

    def add(tname: str, t: Any) -> None:
        ok = isinstance(t, dict) and isinstance(t.get("sha256"), str)
        ok = ok and bool(SHA256_RE.match(t["sha256"]))
        ok = ok and all(type(t.get(k)) is int for k in ("begin", "end"))
        if not ok or not 8 <= t["begin"] <= t["end"] <= _MAX_OFFSET:
            raise bad(f"has a bad entry for tensor '{tname}' (sha256, 8 <= begin <= end)")
        if names and tname <= names[-1]:
            raise bad(
                f"names tensor '{tname}' twice or out of order (lock writes each once, sorted)"
            )
        names.append(tname)
        begins.append(t["begin"])
        ends.append(t["end"])
        shas.extend(bytes.fromhex(t["sha256"]))

    def fast(text: str, i: int) -> tuple[int, bool] | None:
        m = _FAST_ROW.match(text, i)
        if m is None:
            return None
        add(m[1], {"begin": int(m[2]), "end": int(m[3]), "sha256": m[4]})
        return m.end(), m[5] == "}"

    def member(key: str, text: str, i: int) -> int:
        if key in top:
            raise bad(f"has '{key}' twice")
        if key == "tensors":
            top[key] = text[i : i + 1] == "{"
            return _members(text, i, row, fast) if top[key] else _value(text, i)[1]
        top[key], end = _value(text, i)
        return end

    try:
        if not _document(text, member):
            raise bad("is not a JSON object")
    except RecursionError:
        raise bad("is nested too deeply") from None
    except TensorIndexError:
        raise
    except ValueError as exc:
        raise bad(f"is not JSON ({exc})") from None
    if top.get("format_version") != FORMAT_VERSION:
        raise bad(f"is not format_version {FORMAT_VERSION}")
    sums = (top.get("file_sha256"), top.get("header_sha256"))
    if not all(isinstance(s, str) and SHA256_RE.match(s) for s in sums):
        raise bad("lacks file_sha256 / header_sha256 (64 hex digits)")
    if top.get("tensors") is not True:
        raise bad("has no 'tensors' mapping")
    header_end = min(begins, default=8)
    if header_end - 8 > MAX_HEADER:
        raise bad(
            f"puts the first tensor at byte {header_end}: a safetensors header is at most "
            f"{MAX_HEADER} bytes"
        )
    return TensorIndex(
        path, str(sums[0]), str(sums[1]), names, begins, ends, bytes(shas), header_end
    )


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
