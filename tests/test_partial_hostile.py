"""Partial reads against hostile tensor indexes and safetensors headers (issue 17 point 7).

The index is committed beside the manifest, which pins its sha256: a hostile index is
one that was re-hashed so it passes its own check. Every range it names is checked
against the verified safetensors header before a tensor is requested; bytes served are
counted by the local hub. Headers are checked as safetensors itself checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from partial_files import HF_PATH, cli, index, make_tensors, publish, safetensors_bytes
from test_hardening_mounts import Mounts, mounts  # noqa: F401  (fixture)

from pytest_ckpts import ChecksumMismatchError, TensorIndexError, load_manifest
from pytest_ckpts.partial import Partial, PartialReader
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

Doc = dict[str, Any]


def _read(manifest: Path, names: list[str], *, offline: bool = False) -> Partial:
    m = load_manifest(manifest)
    return PartialReader(Store(m, offline=offline)).read(m.get("llm"), names)


def _served(hub: LocalHub) -> int:
    return sum(r.bytes_sent for r in hub.stats.requests if "model.safetensors" in r.path)


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


def _one_line(exc: BaseException, *words: str) -> None:
    message = str(exc)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.fixture
def data() -> bytes:
    return safetensors_bytes(make_tensors(big=512), metadata={"arch": "test"})


@pytest.fixture
def manifest(project: Path, hub: LocalHub, data: bytes) -> Path:
    path = publish(project, hub, data)
    index(path)
    hub.stats.reset()
    return path


def _rows(manifest: Path) -> dict[str, Doc]:
    doc = json.loads((manifest.parent / "tensors" / "llm.json").read_text())
    rows: dict[str, Doc] = doc["tensors"]
    return rows


# --------------------------------------------------------------------------- lying ranges


@pytest.mark.parametrize("case", ["only-tensor-to-eof", "last-to-2**62", "first-overlaps"])
def test_lying_range_fetches_no_more_than_header_and_tensor(
    manifest: Path, hub: LocalHub, data: bytes, case: str
) -> None:
    rows = _rows(manifest)
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
        _read(manifest, [name])
    _one_line(info.value, "checkpoints/tensors/llm.json", f"'{name}'", "lock --tensors llm")
    assert _served(hub) <= header + true_size


def test_lying_range_against_a_cached_whole_file_reads_nothing_more(
    manifest: Path, hub: LocalHub, data: bytes
) -> None:
    m = load_manifest(manifest)
    Store(m).resolve(m.get("llm"))
    last = max(_rows(manifest).items(), key=lambda kv: kv[1]["end"])[0]

    def lie(doc: Doc) -> None:
        row = doc["tensors"][last]
        row["end"] = 2**62
        row["sha256"] = hashlib.sha256(data[row["begin"] :]).hexdigest()

    _rewrite_index(manifest, lie)
    hub.stats.reset()
    with pytest.raises(TensorIndexError) as info:
        _read(manifest, [last])
    _one_line(info.value, f"'{last}'", "lock --tensors llm")
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
        _read(manifest, ["ids"])
    _one_line(info.value, "past its end", "lock --tensors llm")
    assert hub.stats.request_count == 0


def test_tensor_that_shrinks_the_header_is_a_one_line_index_error(
    manifest: Path, hub: LocalHub, data: bytes
) -> None:
    rows = _rows(manifest)
    first = min(rows, key=lambda n: rows[n]["begin"])

    def shrink(doc: Doc) -> None:
        row = doc["tensors"][first]
        row["begin"] -= 16
        row["sha256"] = hashlib.sha256(data[row["begin"] : row["end"]]).hexdigest()
        doc["header_sha256"] = hashlib.sha256(data[: row["begin"]]).hexdigest()

    _rewrite_index(manifest, shrink)
    with pytest.raises(TensorIndexError) as info:
        _read(manifest, [first])
    _one_line(info.value, "checkpoints/tensors/llm.json", "header", "lock --tensors llm")
    assert _served(hub) <= rows[first]["begin"]  # the header only: no tensor was asked for


def test_duplicate_or_unsorted_index_rows_are_refused_before_any_request(
    manifest: Path, hub: LocalHub
) -> None:
    target = manifest.parent / "tensors" / "llm.json"
    raw = target.read_text()
    rows = _rows(manifest)
    a, b = sorted(rows)[:2]
    text = raw.replace(json.dumps(a) + ":", json.dumps(b) + ":", 1)  # two rows named b
    target.write_text(text)
    spec = load_manifest(manifest).get("llm")
    assert spec.tensor_index is not None
    new = hashlib.sha256(text.encode()).hexdigest()
    manifest.write_text(manifest.read_text().replace(spec.tensor_index, new))
    with pytest.raises(TensorIndexError) as info:
        _read(manifest, [b])
    _one_line(info.value, "checkpoints/tensors/llm.json", f"'{b}'", "lock --tensors llm")
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
    from partial_files import write_manifest
    from safetensors import safe_open

    from pytest_ckpts.tensor_index import build_index

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
    _one_line(info.value, str(src / HF_PATH))


def test_header_listing_tensors_out_of_file_order_is_valid(tmp_path: Path) -> None:
    """safetensors sorts by offsets when it reads: a header in another order is fine."""
    from safetensors import safe_open

    from pytest_ckpts.tensor_index import build_index

    header = (
        b'{"c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},'
        b'"e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},'
        b'"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        b'"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}'
    )
    raw = _file(header, b"abcdef")
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with safe_open(str(path), framework="pt") as f:
        assert bytes(f.get_tensor("c").tolist()) == b"ef"
    doc = json.loads(build_index(path, hashlib.sha256(raw).hexdigest()))
    assert [doc["tensors"][n]["begin"] - 8 - len(header) for n in "abce"] == [0, 2, 4, 2]


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
        _read(manifest, ["t"])
    _one_line(info.value, "nested", "lock --tensors llm")


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


def test_corrupted_piece_in_a_read_only_cache(
    manifest: Path,
    hub: LocalHub,
    mounts: Mounts,  # noqa: F811
) -> None:
    """Online: read that range from the hub again, keep nothing. Offline: one line."""
    _read(manifest, ["ids"])
    row = _rows(manifest)["ids"]
    piece = next(
        p
        for p in (manifest.parent / ".ckpts" / "tensors").rglob("*.bin")
        if p.stem == row["sha256"]
    )
    bad = b"x" + piece.read_bytes()[1:]
    piece.write_bytes(bad)
    mounts.read_only(manifest.parent)
    hub.stats.reset()
    got = _read(manifest, ["ids"])
    assert got.source == "downloaded"
    assert torch.equal(got.tensors["ids"], make_tensors()["ids"])
    assert _served(hub) == row["end"] - row["begin"]
    assert piece.read_bytes() == bad  # nothing kept, nothing removed
    hub.stats.reset()
    with pytest.raises(ChecksumMismatchError) as info:
        _read(manifest, ["ids"], offline=True)
    _one_line(info.value, "tensor 'ids'", "checkpoint 'llm'", str(piece), "read-only")
    assert hub.stats.request_count == 0


def test_corrupted_piece_offline_in_a_writable_cache_is_one_line(
    manifest: Path, hub: LocalHub
) -> None:
    _read(manifest, ["ids"])
    row = _rows(manifest)["ids"]
    piece = next(
        p
        for p in (manifest.parent / ".ckpts" / "tensors").rglob("*.bin")
        if p.stem == row["sha256"]
    )
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(ChecksumMismatchError) as info:
        _read(manifest, ["ids"], offline=True)
    _one_line(info.value, "tensor 'ids'", "checkpoint 'llm'", "removed")
    assert not piece.exists()


# --------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    import huggingface_hub, filelock, yaml  # their memory is not the header's
    from pytest_ckpts import load_manifest
    from pytest_ckpts.cli import main
    from pytest_ckpts.partial import PartialReader
    from pytest_ckpts.store import Store
    import pytest_ckpts.hub_client, pytest_ckpts.publish

    manifest, what = sys.argv[1], sys.argv[2]
    if what == "read":  # torch, the HTTP client and its first request: not the header's
        import torch
        m = load_manifest(manifest)
        store = Store(m)
        store.hub.probe(m.get("llm"))
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS (Linux >= 4.0)
        f.write("5")

    def peak():
        # VmHWM, not getrusage's ru_maxrss: after exec that also counts the pre-exec
        # (forked pytest) image, which is larger than anything measured here
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    before = peak()
    if what == "lock":
        out = io.StringIO()
        code = main(["--manifest", manifest, "lock", "--tensors", "--from", sys.argv[3], "llm"], out=out)
        assert code == 0, out.getvalue()
    else:
        got = PartialReader(store).read(m.get("llm"), ["x"])
        assert got.tensors["x"].tolist() == [7], got.tensors
    print(json.dumps({"grew": peak() - before}))
    """
)


def _many_tensors_file(count: int) -> bytes:
    """A valid safetensors file with ``count`` one-byte tensors and one 8-byte tensor."""
    parts = [b'{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}']
    parts += [
        b',"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, 8 + i, 9 + i)
        for i in range(count)
    ]
    header = b"".join(parts) + b"}"
    header += b" " * (-len(header) % 8)
    return _file(header, (7).to_bytes(8, "little") + bytes(count))


@pytest.mark.slow
def test_big_header_costs_a_few_times_its_size(project: Path, hub: LocalHub) -> None:
    """Lock and a read of one 8-byte tensor stay within a few times the header size."""
    from partial_files import write_manifest

    raw = _many_tensors_file(100_000)  # main f51f74f: lock 30x, read 22x the header
    header = int.from_bytes(raw[:8], "little")
    assert header > 6_000_000
    src = project / "src"
    (src / HF_PATH).parent.mkdir(parents=True)
    (src / HF_PATH).write_bytes(raw)
    commit = hub.add_file(REPO, HF_PATH, raw)
    manifest = write_manifest(project, hub.endpoint, raw, revision=commit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    grew = {}
    for what in ("lock", "read"):
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(manifest), what, str(src)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        grew[what] = json.loads(done.stdout.strip().splitlines()[-1])["grew"]
    limit = 6 * header + 32 * 2**20
    assert grew["lock"] <= limit, (grew, header)
    assert grew["read"] <= limit, (grew, header)
