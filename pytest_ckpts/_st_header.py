"""Safetensors headers, checked as safetensors itself checks them, in bounded memory
(:mod:`pytest_ckpts.tensor_index` uses them for the index and for partial reads).

The checks follow ``read_metadata`` and ``Metadata::validate`` in
safetensors/src/tensor.rs: at most 100 MB, UTF-8 JSON holding one object, a
``__metadata__`` of strings, each tensor's size that of its dtype and shape, the tensors
laid end to end from byte ``8 + N`` (no overlap, no hole). JSON is walked one member at a
time (:func:`members`), never one Python dict per tensor: a tensor is its name and two
offsets in arrays, so memory stays within a few times the header's size.
"""

from __future__ import annotations

import itertools
import json
import re
from array import array
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # C or pure, always there
from typing import Any

from .errors import TensorIndexError

__all__ = [
    "FAST_ROW",
    "ITEMSIZE",
    "MAX_HEADER",
    "MAX_OFFSET",
    "Header",
    "TensorEntry",
    "document",
    "members",
    "parse_header",
    "value",
]

#: safetensors' own limit (``MAX_HEADER_SIZE`` in safetensors/src/tensor.rs, 0.3 to 0.8)
MAX_HEADER = 100_000_000
#: offsets are u64 in safetensors and signed 64-bit here
MAX_OFFSET = 2**63 - 1

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
    "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


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
FAST_ROW = re.compile(
    _NAME + r"\{" + _S + r'"begin":' + _S + _INT + "," + _S + r'"end":' + _S + _INT + ","
    + _S + r'"sha256":' + _S + r'"([0-9a-f]{64})"' + _S + r"\}" + _SEP
)  # fmt: skip


def _ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def members(text: str, i: int, member: Member, fast: Fast | None = None) -> int:
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


def document(text: str, member: Member, fast: Fast | None = None) -> bool:
    """Walk ``text``, one JSON object (whitespace around it allowed), with ``member``;
    False if it does not start as an object."""
    start = _ws(text, 0)
    if text[start : start + 1] != "{":
        return False
    end = members(text, start, member, fast)
    if _ws(text, end) != len(text):
        raise ValueError(f"extra data after the JSON object at char {end}")
    return True


def value(text: str, i: int) -> tuple[Any, int]:
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

    def file_order(self) -> Sequence[int]:
        """Positions sorted by ``(begin, end)``, as safetensors orders them. Headers that
        safetensors wrote are in that order already: then no list is built."""
        pairs = zip(self.begins, self.ends, strict=True)
        if all(a <= b for a, b in itertools.pairwise(pairs)):
            return range(len(self.names))
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
            info, end = value(text, i)
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
        if not document(text, member, fast):
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
            how = "overlaps the data before it" if out.begins[i] < start else "leaves a hole"
            raise bad(
                f"tensor '{out.names[i]}' {how} (data_offsets [{out.begins[i] - out.length}, "
                f"{out.ends[i] - out.length}], the data before ends at {start - out.length}); "
                "safetensors refuses such files"
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
    if not (type(b) is int and type(e) is int and 0 <= b <= e <= MAX_OFFSET - base):
        return None
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        count *= d
        if count > MAX_OFFSET:  # safetensors: ValidationOverflow (and no quadratic time)
            return None
    if e - b != count * ITEMSIZE[dtype]:
        return None
    return TensorEntry(dtype, tuple(shape), base + b, base + e)
