"""Partial reads against hostile tensor indexes and safetensors headers (issue 17 point 7).

The index is committed beside the manifest, which pins its sha256: a hostile index is
one that was re-hashed so it passes its own check. Every range it names is checked
against the verified safetensors header before a tensor is requested; bytes served are
counted by the local hub. Headers are checked as safetensors itself checks them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ckpts import TensorIndexError, load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests import partial_files
from tests.partial_files import (
    HF_PATH,
    assert_one_line,
    cli,
    index_rows,
    publish,
    read_tensors,
    safetensors_bytes,
    served_bytes,
)

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

Doc = dict[str, Any]


def _rewrite_index(manifest: Path, edit: Callable[[Doc], None]) -> None:
    """Edit the index and re-hash it into the manifest: it passes its own check."""
    target = manifest.parent / "tensors" / "llm.json"
    doc = json.loads(target.read_text())
    edit(doc)
    raw = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    target.write_bytes(raw)
    spec = load_manifest(manifest).get("llm")
    assert spec.tensor_index is not None
    text = manifest.read_text().replace(spec.tensor_index, hashlib.sha256(raw).hexdigest())
    manifest.write_text(text)


data = partial_files.data  # shared fixtures (tests/partial_files.py)
manifest = partial_files.manifest


# --------------------------------------------------------------------------- lying ranges


@pytest.mark.parametrize("case", ["only-tensor-to-eof", "last-to-2**62", "first-overlaps"])
def test_lying_range_fetches_no_more_than_header_and_tensor(
    manifest: Path, hub: LocalHub, data: bytes, case: str
) -> None:
    rows = index_rows(manifest)
    by_begin = sorted((r["begin"], r["end"], n) for n, r in rows.items() if r["end"] > r["begin"])
    header = by_begin[0][0]
    first, last = by_begin[0][2], by_begin[-1][2]
    name = last if case == "last-to-2**62" else first
    true_size = rows[name]["end"] - rows[name]["begin"]

    def lie(doc: Doc) -> None:
        row = doc["tensors"][name]
        row["end"] = 2**62 if case == "last-to-2**62" else len(data)
        row["sha256"] = hashlib.sha256(data[row["begin"] : row["end"]]).hexdigest()
        if case == "only-tensor-to-eof":
            doc["tensors"] = {name: row}

    _rewrite_index(manifest, lie)
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, [name])
    assert_one_line(info.value, "checkpoints/tensors/llm.json", f"'{name}'", "lock --tensors llm")
    assert served_bytes(hub) <= header + true_size


def test_lying_range_against_a_cached_whole_file_reads_nothing_more(
    manifest: Path, hub: LocalHub, data: bytes
) -> None:
    m = load_manifest(manifest)
    Store(m).resolve(m.get("llm"))
    last = max(index_rows(manifest).items(), key=lambda kv: kv[1]["end"])[0]

    def lie(doc: Doc) -> None:
        row = doc["tensors"][last]
        row["end"] = 2**62
        row["sha256"] = hashlib.sha256(data[row["begin"] :]).hexdigest()

    _rewrite_index(manifest, lie)
    hub.stats.reset()
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, [last])
    assert_one_line(info.value, f"'{last}'", "lock --tensors llm")
    assert hub.stats.request_count == 0


def test_index_past_the_end_of_a_cached_whole_file_is_refused_before_reading(
    manifest: Path, hub: LocalHub, data: bytes
) -> None:
    m = load_manifest(manifest)
    Store(m).resolve(m.get("llm"))

    def shift(doc: Doc) -> None:  # every range moved past the end: a header of len(data)+
        for row in doc["tensors"].values():
            row["begin"] += len(data)
            row["end"] += len(data)

    _rewrite_index(manifest, shift)
    hub.stats.reset()
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, ["ids"])
    assert_one_line(info.value, "past its end", "lock --tensors llm")
    assert hub.stats.request_count == 0


def test_tensor_that_shrinks_the_header_is_a_one_line_index_error(
    manifest: Path, hub: LocalHub, data: bytes
) -> None:
    rows = index_rows(manifest)
    first = min(rows, key=lambda n: rows[n]["begin"])

    def shrink(doc: Doc) -> None:
        row = doc["tensors"][first]
        row["begin"] -= 16
        row["sha256"] = hashlib.sha256(data[row["begin"] : row["end"]]).hexdigest()
        doc["header_sha256"] = hashlib.sha256(data[: row["begin"]]).hexdigest()

    _rewrite_index(manifest, shrink)
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, [first])
    assert_one_line(info.value, "checkpoints/tensors/llm.json", "header", "lock --tensors llm")
    assert served_bytes(hub) <= rows[first]["begin"]  # the header only: no tensor was asked for


def test_duplicate_or_unsorted_index_rows_are_refused_before_any_request(
    manifest: Path, hub: LocalHub
) -> None:
    target = manifest.parent / "tensors" / "llm.json"
    raw = target.read_text()
    rows = index_rows(manifest)
    a, b = sorted(rows)[:2]
    text = raw.replace(json.dumps(a) + ":", json.dumps(b) + ":", 1)  # two rows named b
    target.write_text(text)
    spec = load_manifest(manifest).get("llm")
    assert spec.tensor_index is not None
    new = hashlib.sha256(text.encode()).hexdigest()
    manifest.write_text(manifest.read_text().replace(spec.tensor_index, new))
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, [b])
    assert_one_line(info.value, "checkpoints/tensors/llm.json", f"'{b}'", "lock --tensors llm")
    assert hub.stats.request_count == 0


# --------------------------------------------------------------------------- hostile headers


def _file(header: bytes, body: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + body


DEEP = 100_000
T = b'"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}'
HOSTILE = {
    "deep-metadata": (
        _file(b'{"__metadata__":{"x":' + b"[" * DEEP + b"]" * DEEP + b"}," + T + b"}", b"ab"),
        "nested",
    ),
    "deep-tensor": (_file(b'{"t":' + b"[" * DEEP + b"]" * DEEP + b"}", b"ab"), "'t'"),
    "overlap": (
        _file(
            b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
            b'"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}',
            b"abcd",
        ),
        "'b'",
    ),
    "hole": (
        _file(
            b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
            b'"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}',
            b"abcdef",
        ),
        "'b'",
    ),
    "trailing-bytes": (_file(b"{" + T + b"}", b"abcd"), "file"),
    "metadata-not-strings": (_file(b'{"__metadata__":{"x":1},' + T + b"}", b"ab"), "__metadata__"),
    "duplicate-name": (_file(b"{" + T + b"," + T + b"}", b"abab"), "'t'"),
}


def _load_all(safe_open: Any, path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
            f.get_tensor(k)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_lock_tensors_refuses_what_safetensors_refuses_in_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    from safetensors import safe_open

    from pytest_ckpts.tensor_index import build_index
    from tests.partial_files import write_manifest

    raw, word = HOSTILE[case]
    src = project / "src"
    (src / HF_PATH).parent.mkdir(parents=True)
    (src / HF_PATH).write_bytes(raw)
    if case != "duplicate-name":  # safetensors keeps the last of two equal keys
        with pytest.raises(Exception):  # noqa: B017 - safetensors' own error types
            _load_all(safe_open, src / HF_PATH)
    path = write_manifest(project, "http://127.0.0.1:9", raw)
    code, _out = cli("--manifest", str(path), "lock", "--tensors", "--from", str(src), "llm")
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert "RecursionError" not in err
    assert "cannot index checkpoint 'llm'" in err
    assert word in err
    assert not (project / "checkpoints" / "tensors" / "llm.json").exists()
    with pytest.raises(TensorIndexError) as info:
        build_index(src / HF_PATH, hashlib.sha256(raw).hexdigest())
    assert_one_line(info.value, str(src / HF_PATH))


def test_hostile_header_served_for_a_hostile_index_is_one_line(
    project: Path, hub: LocalHub
) -> None:
    """An index whose header_sha256 names a nested header: no RecursionError."""
    raw, _ = HOSTILE["deep-metadata"]
    n = int.from_bytes(raw[:8], "little")
    manifest = publish(project, hub, raw)
    doc = {
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "format_version": 1,
        "header_sha256": hashlib.sha256(raw[: 8 + n]).hexdigest(),
        "tensors": {
            "t": {"begin": 8 + n, "end": 10 + n, "sha256": hashlib.sha256(b"ab").hexdigest()}
        },
    }
    text = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    (project / "checkpoints" / "tensors").mkdir()
    (project / "checkpoints" / "tensors" / "llm.json").write_bytes(text)
    manifest.write_text(
        manifest.read_text().replace(
            "    sha256:", f'    tensor_index: "{hashlib.sha256(text).hexdigest()}"\n    sha256:'
        )
    )
    with pytest.raises(TensorIndexError) as info:
        read_tensors(manifest, ["t"])
    assert_one_line(info.value, "nested", "lock --tensors llm")


def test_index_writer_is_byte_for_byte_json_dumps(tmp_path: Path) -> None:
    """The streamed index is the canonical JSON earlier versions wrote (same tensor_index)."""
    from pytest_ckpts.tensor_index import build_index

    names = ["b", "a", 'q"uote', "é-unicode", "back\\slash", "ctl\x01", "💥", "A"]
    tensors = {n: torch.arange(i + 1, dtype=torch.int32) for i, n in enumerate(names)}
    tensors["empty"] = torch.zeros(0)
    raw = safetensors_bytes(tensors)
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    sha = hashlib.sha256(raw).hexdigest()
    built = build_index(path, sha)
    doc = json.loads(built)
    assert built == (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    assert set(doc["tensors"]) == set(tensors)


# --------------------------------------------------------------------------- read-only cache


# --------------------------------------------------------------------------- memory
