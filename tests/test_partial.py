"""Partial reads against the local hub: the tensor index, Range reads, verification, policy.

Real parts only: safetensors files made by safetensors, huggingface_hub's HTTP session
over real sockets to the local hub (which answers ``Range`` with 206), real torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_ckpts import (
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    ManifestError,
    TensorIndexError,
    load_manifest,
)
from pytest_ckpts.partial import Partial, PartialReader
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests import partial_files
from tests.helpers import REPO, dead_endpoint
from tests.partial_files import HF_PATH, cli, index, make_tensors, publish, safetensors_bytes

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")


def _read(
    manifest: Path, names: list[str], *, offline: bool = False, merge_gap: int = 64 * 1024
) -> Partial:
    m = load_manifest(manifest)
    reader = PartialReader(Store(m, offline=offline), merge_gap=merge_gap)
    return reader.read(m.get("llm"), names)


def _ranges(hub: LocalHub) -> list[str | None]:
    return [r.range for r in hub.stats.requests if r.body]


@pytest.fixture
def tensors() -> dict[str, object]:
    return make_tensors()


@pytest.fixture
def data(tensors: dict[str, object]) -> bytes:
    return safetensors_bytes(tensors, metadata={"arch": "test"})


manifest = partial_files.manifest  # of this module's data (tests/partial_files.py)


# --------------------------------------------------------------------------- the index


def test_lock_tensors_writes_index_and_records_its_sha(
    project: Path, hub: LocalHub, data: bytes, tensors: dict[str, object]
) -> None:
    path = publish(project, hub, data)
    out = index(path)
    target = project / "checkpoints" / "tensors" / "llm.json"
    assert f"indexed llm: {len(tensors)} tensors" in out
    raw = target.read_bytes()
    doc = json.loads(raw)
    assert doc["format_version"] == 1
    assert doc["file_sha256"] == hashlib.sha256(data).hexdigest()
    n = int.from_bytes(data[:8], "little")
    assert doc["header_sha256"] == hashlib.sha256(data[: 8 + n]).hexdigest()
    assert set(doc["tensors"]) == set(tensors)
    for row in doc["tensors"].values():  # absolute offsets into the file
        assert row["sha256"] == hashlib.sha256(data[row["begin"] : row["end"]]).hexdigest()
    assert min(r["begin"] for r in doc["tensors"].values()) == 8 + n
    spec = load_manifest(path).get("llm")
    assert spec.tensor_index == hashlib.sha256(raw).hexdigest()
    # deterministic: a second run writes the same bytes and changes nothing
    assert "locked 0 entries" in index(path)
    assert target.read_bytes() == raw
    assert cli("--manifest", str(path), "lock", "--check") == (0, "manifest is locked\n")


def test_lock_tensors_from_dir_needs_no_hub_and_refuses_other_bytes(
    project: Path, data: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.partial_files import write_manifest

    path = write_manifest(project, dead_endpoint(), data)
    src = project / "src"
    (src / HF_PATH).parent.mkdir(parents=True)
    (src / HF_PATH).write_bytes(data[:-1] + b"\x00")
    code, _out = cli("--manifest", str(path), "lock", "--tensors", "--from", str(src), "llm")
    assert code == 1  # a check failed (not a usage error)
    assert "Checksum mismatch" in capsys.readouterr().err
    assert not (project / "checkpoints" / "tensors").exists()
    (src / HF_PATH).write_bytes(data)
    index(path, source=src)
    assert load_manifest(path).get("llm").tensor_index is not None


def test_lock_tensors_refuses_a_file_that_is_not_safetensors(
    project: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    path = publish(project, hub, b"\xff" * 64 + b"pickle")
    code, _ = cli("--manifest", str(path), "lock", "--tensors", "llm")
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "cannot index checkpoint 'llm'" in err
    assert ".safetensors" in err
    assert not (project / "checkpoints" / "tensors" / "llm.json").exists()
    with pytest.raises(SystemExit) as info:
        cli("--manifest", str(path), "lock", "--tensors")
    assert info.value.code == 2


def test_lock_check_covers_the_index(manifest: Path) -> None:
    target = manifest.parent / "tensors" / "llm.json"
    raw = target.read_bytes()
    target.write_bytes(raw.replace(b'"begin"', b'"begin" ', 1))
    code, out = cli("--manifest", str(manifest), "lock", "--check")
    assert code == 1
    assert "would set llm: tensor_index" in out
    assert "lock --tensors llm" in out
    target.unlink()
    code, out = cli("--manifest", str(manifest), "lock", "--check")
    assert code == 1
    assert "cannot be read" in out
    target.write_bytes(raw)
    assert cli("--manifest", str(manifest), "lock", "--check")[0] == 0
    # the file changed (lock --update): the index was made from the old one
    other = "b" * 64
    text = manifest.read_text()
    spec = load_manifest(manifest).get("llm")
    assert spec.sha256 is not None
    manifest.write_text(text.replace(spec.sha256, other))
    code, out = cli("--manifest", str(manifest), "lock", "--check")
    assert code == 1
    assert f"now has sha256 {other}" in out


@pytest.mark.parametrize("value", ["xyz", "123", "'" + "g" * 64 + "'"])
def test_manifest_validates_tensor_index(project: Path, value: str) -> None:
    path = project / "checkpoints" / "checkpoints.yaml"
    path.write_text(
        f"checkpoints:\n  a:\n    hf_path: a.safetensors\n    tensor_index: {value}\n"
        "config:\n  hf_repo: acme/x\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "entry 'a'" in message
    assert "key 'tensor_index'" in message
    assert "lock --tensors a" in message
    assert "\n" not in message
    path.write_text(path.read_text().replace(value, '"' + "AB" * 32 + '"'))
    assert load_manifest(path).get("a").tensor_index == "ab" * 32


def test_cache_key_covers_the_index(manifest: Path) -> None:
    before = cli("--manifest", str(manifest), "cache", "key")[1]
    spec = load_manifest(manifest).get("llm")
    assert spec.tensor_index is not None
    manifest.write_text(manifest.read_text().replace(spec.tensor_index, "c" * 64))
    assert cli("--manifest", str(manifest), "cache", "key")[1] != before


# --------------------------------------------------------------------------- reads


def test_cold_read_fetches_header_and_tensors_only_then_nothing(
    manifest: Path, hub: LocalHub, data: bytes, tensors: dict[str, object]
) -> None:
    doc = json.loads((manifest.parent / "tensors" / "llm.json").read_text())
    names = ["norm", "ids", "mask", "half", "empty"]
    got = _read(manifest, names)
    for n in names:
        assert torch.equal(got.tensors[n], tensors[n]), n
        assert got.tensors[n].dtype == tensors[n].dtype
    header = min(r["begin"] for r in doc["tensors"].values())
    wanted = header + sum(doc["tensors"][n]["end"] - doc["tensors"][n]["begin"] for n in names)
    assert (got.source, got.size) == ("downloaded", len(data))
    sent = sum(r.bytes_sent for r in hub.stats.requests if r.body)
    assert got.nbytes == sent
    assert wanted <= sent <= wanted + 64 * 1024  # only merge gaps on top
    assert sent < len(data) / 4
    assert all(r is not None for r in _ranges(hub))  # never a full download
    hub.stats.reset()
    again = _read(manifest, names)  # a new store: as a later run or another process
    assert hub.stats.request_count == 0
    assert again.source == "cached"
    assert again.size == len(data)
    assert torch.equal(again.tensors["norm"], tensors["norm"])


def test_adjacent_tensors_are_one_request(manifest: Path, hub: LocalHub) -> None:
    doc = json.loads((manifest.parent / "tensors" / "llm.json").read_text())
    rows = sorted(doc["tensors"].items(), key=lambda kv: kv[1]["begin"])
    first, second = rows[0][0], rows[1][0]
    assert rows[0][1]["end"] == rows[1][1]["begin"]
    got = _read(manifest, [second, first], merge_gap=0)
    assert list(got.tensors) == [second, first]
    assert got.requests == 2  # the header (checked against the index first), then both
    header = rows[0][1]["begin"]
    assert _ranges(hub) == [f"bytes=0-{header - 1}", f"bytes={header}-{rows[1][1]['end'] - 1}"]
    hub.stats.reset()
    assert _read(manifest, [first], merge_gap=0).requests == 0  # header and tensor cached


def test_big_tensor_is_not_merged_into_neighbours_when_far(
    manifest: Path, hub: LocalHub, tensors: dict[str, object]
) -> None:
    got = _read(manifest, ["block.w"], merge_gap=0)
    assert torch.equal(got.tensors["block.w"], tensors["block.w"])
    assert got.requests == 2  # header, then the tensor


def test_whole_file_cached_is_read_instead_of_the_hub(
    manifest: Path, hub: LocalHub, tensors: dict[str, object]
) -> None:
    m = load_manifest(manifest)
    Store(m).resolve(m.get("llm"))
    hub.stats.reset()
    got = _read(manifest, ["embed", "block.w"])
    assert hub.stats.request_count == 0
    assert got.source == "cached"
    assert torch.equal(got.tensors["embed"], tensors["embed"])


def test_offline_reads_only_cached_pieces(manifest: Path, hub: LocalHub) -> None:
    with pytest.raises(CheckpointSkipped, match=r"not cached.*offline"):
        _read(manifest, ["embed"], offline=True)
    _read(manifest, ["embed"])
    hub.stats.reset()
    assert _read(manifest, ["embed"], offline=True).source == "cached"
    with pytest.raises(CheckpointSkipped):
        _read(manifest, ["embed", "ids"], offline=True)
    assert hub.stats.request_count == 0


def test_corrupted_cached_piece_is_read_again(manifest: Path, hub: LocalHub) -> None:
    _read(manifest, ["ids"])
    pieces = list((manifest.parent / ".ckpts" / "tensors").rglob("*.bin"))
    for piece in pieces:
        piece.write_bytes(b"x" + piece.read_bytes()[1:])
    hub.stats.reset()
    assert _read(manifest, ["ids"]).source == "downloaded"
    for piece in pieces:
        piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(ChecksumMismatchError, match=r"Checksum mismatch.*cached copy"):
        _read(manifest, ["ids"], offline=True)  # offline: an error, never a fetch
    assert hub.stats.count(path_contains="model.safetensors") == 2  # header, then tensor


# --------------------------------------------------------------------------- mismatches


def test_tampered_range_names_the_tensor_and_both_digests(
    project: Path, hub: LocalHub, data: bytes
) -> None:
    manifest = publish(project, hub, data, pinned=False)
    index(manifest)
    doc = json.loads((manifest.parent / "tensors" / "llm.json").read_text())
    row = doc["tensors"]["embed"]
    tampered = bytearray(data)
    tampered[row["begin"] + 5] ^= 0x01  # same header, one byte of one tensor changed
    hub.add_file(REPO, HF_PATH, bytes(tampered))
    hub.stats.reset()
    with pytest.raises(ChecksumMismatchError) as info:
        _read(manifest, ["ids", "embed"])
    message = str(info.value)
    actual = hashlib.sha256(bytes(tampered[row["begin"] : row["end"]])).hexdigest()
    assert "tensor 'embed' of checkpoint 'llm'" in message
    assert row["sha256"] in message
    assert actual in message
    assert (info.value.expected, info.value.actual) == (row["sha256"], actual)
    assert all(r is not None for r in _ranges(hub))  # no fallback to a full download
    kept = {p.stem for p in (manifest.parent / ".ckpts" / "tensors").rglob("*.bin")}
    assert row["sha256"] not in kept
    assert actual not in kept


def test_corrupted_body_on_the_wire_is_an_error_not_a_skip(manifest: Path, hub: LocalHub) -> None:
    _read(manifest, ["ids"])  # header now cached: the next body is a tensor's
    hub.faults.corrupt_next(1, path_contains="model.safetensors")
    with pytest.raises(ChecksumMismatchError, match="tensor 'mask'"):
        _read(manifest, ["mask"])
    assert _read(manifest, ["mask"]).source == "downloaded"


def test_stale_index_is_a_one_line_error(project: Path, hub: LocalHub, data: bytes) -> None:
    manifest = publish(project, hub, data, pinned=False)
    index(manifest)
    retrained = make_tensors()
    retrained["extra"] = torch.ones(2)
    hub.add_file(REPO, HF_PATH, safetensors_bytes(retrained))
    with pytest.raises(TensorIndexError) as info:
        _read(manifest, ["ids"])
    message = str(info.value)
    assert "\n" not in message
    assert "is stale" in message
    assert "re-run `pytest-ckpts lock --tensors llm`" in message


def test_missing_or_edited_index_refuses_partial_reads(
    project: Path, hub: LocalHub, data: bytes
) -> None:
    manifest = publish(project, hub, data)
    with pytest.raises(TensorIndexError) as info:
        _read(manifest, ["ids"])
    assert "\n" not in str(info.value)
    assert "has no tensor_index" in str(info.value)
    assert "run `pytest-ckpts lock --tensors llm`" in str(info.value)
    assert hub.stats.request_count == 0  # refused before any request
    index(manifest)
    target = manifest.parent / "tensors" / "llm.json"
    target.write_text(target.read_text().replace('"format_version": 1', '"format_version": 2'))
    with pytest.raises(TensorIndexError, match="edited or the manifest is out of date"):
        _read(manifest, ["ids"])
    index(manifest)
    with pytest.raises(TensorIndexError, match=r"no tensor 'idz'.*Did you mean: 'ids'"):
        _read(manifest, ["idz"])


# --------------------------------------------------------------------------- policy


def test_transient_errors_are_retried_within_the_budget(manifest: Path, hub: LocalHub) -> None:
    hub.faults.fail_next(2, 503, path_contains="model.safetensors")
    assert _read(manifest, ["ids"]).source == "downloaded"
    # the probe, the header (retried), then the tensor
    assert [r.status for r in hub.stats.requests] == [200, 503, 503, 206, 206]


def test_spent_retry_budget_is_a_transient_download_error(manifest: Path, hub: LocalHub) -> None:
    hub.faults.fail_next(50, 503, path_contains="model.safetensors")
    m = load_manifest(manifest)
    with pytest.raises(CheckpointDownloadError, match="retry budget") as info:
        PartialReader(Store(m, retry_budget=0.5)).read(m.get("llm"), "ids")
    assert info.value.kind == "transient"
    assert hub.stats.count(path_contains="model.safetensors") < 5


def test_permanent_error_is_not_retried(manifest: Path, hub: LocalHub) -> None:
    hub.faults.fail_next(5, 403, path_contains="model.safetensors")
    with pytest.raises(CheckpointDownloadError, match="403") as info:
        _read(manifest, ["ids"])
    assert info.value.kind == "permanent"
    assert hub.stats.count(path_contains="model.safetensors") == 1


def test_branch_with_hub_down_uses_pieces_read_before_as_stale(
    project: Path, hub: LocalHub, data: bytes, tensors: dict[str, object]
) -> None:
    manifest = publish(project, hub, data, pinned=False)
    index(manifest)
    _read(manifest, ["ids"])
    manifest.write_text(manifest.read_text().replace(hub.endpoint, dead_endpoint()))
    m = load_manifest(manifest)
    store = Store(m)
    got = PartialReader(store).read(m.get("llm"), ["ids"])
    assert got.source == "stale"
    assert "hub failed" in str(got.reason)
    assert "llm" not in store.stale_reasons  # returned in Partial.reason, not written there
    assert torch.equal(got.tensors["ids"], tensors["ids"])
    with pytest.raises(CheckpointDownloadError, match="unreachable"):
        PartialReader(store).read(m.get("llm"), ["embed"])  # never read: no stale copy


def test_cache_info_and_prune_know_the_pieces(manifest: Path) -> None:
    _read(manifest, ["ids", "embed"])
    code, out = cli("--manifest", str(manifest), "cache", "info")
    assert code == 0
    assert "tensor pieces (partial reads):" in out
    code, out = cli("--manifest", str(manifest), "cache", "prune")
    assert code == 0
    assert "tensors" not in out
    pieces = list((manifest.parent / ".ckpts" / "tensors").rglob("*.bin"))
    assert len(pieces) == 3
    text = manifest.read_text()
    spec = load_manifest(manifest).get("llm")
    manifest.write_text(text.replace(f'    tensor_index: "{spec.tensor_index}"\n', ""))
    code, out = cli("--manifest", str(manifest), "cache", "prune", "--dry-run")
    assert out.count("would remove") == 4  # three pieces and the size note
    assert all(p.exists() for p in pieces)
    cli("--manifest", str(manifest), "cache", "prune")
    assert not any(p.exists() for p in pieces)


def test_fetch_tensors_outside_pytest_reads_the_environment(
    manifest: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, tensors: dict[str, object]
) -> None:
    from pytest_ckpts import fetch_tensors

    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(manifest))
    got = fetch_tensors("llm", ["half", "ids"])
    assert list(got) == ["half", "ids"]
    assert torch.equal(got["half"], tensors["half"])
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    hub.stats.reset()
    assert torch.equal(fetch_tensors("llm", ["ids"])["ids"], tensors["ids"])
    assert hub.stats.request_count == 0
    with pytest.raises(CheckpointSkipped):
        fetch_tensors("llm", ["embed"])
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    with pytest.raises(CheckpointSkipped, match="Cannot load checkpoint: llm"):
        fetch_tensors("llm", ["ids"])


def test_hub_ignoring_range_is_refused_not_read_whole(
    project: Path, hub: LocalHub, data: bytes
) -> None:
    """An endpoint that answers a Range request with the whole file (200): an error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    manifest = publish(project, hub, data)
    index(manifest)
    commit = hub.commit_sha(REPO)

    class NoRanges(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"sha": commit}).encode() if "/api/" in self.path else data
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the client hung up without reading the body
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoRanges)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        manifest.write_text(manifest.read_text().replace(hub.endpoint, endpoint))
        with pytest.raises(CheckpointDownloadError, match="serves byte ranges") as info:
            _read(manifest, ["ids"])
        assert "HTTP 200 (no Content-Range)" in str(info.value)
        assert info.value.kind == "permanent"
        assert not list((manifest.parent / ".ckpts" / "tensors").rglob("*.bin"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x05\x00", "not a .safetensors file"),
        ((2**60).to_bytes(8, "little") + b"{}", "not a .safetensors file"),
        (len(b"not json").to_bytes(8, "little") + b"not json", "not a JSON object"),
        (len(b"{not json").to_bytes(8, "little") + b"{not json", "not JSON"),
        (len(b"[1]").to_bytes(8, "little") + b"[1]", "not a JSON object"),
        (
            b'{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}',
            "tensor 't' has a bad dtype, shape or data_offsets",
        ),
        (
            b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
            "do not lie within the file",
        ),
        (
            b'{"t":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}',
            "tensor 't' has a bad dtype",
        ),
    ],
)
def test_build_index_refuses_malformed_files_in_one_line(
    tmp_path: Path, raw: bytes, why: str
) -> None:
    from pytest_ckpts.tensor_index import build_index

    if raw.startswith(b"{"):
        raw = len(raw).to_bytes(8, "little") + raw  # a header whose data is missing
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=why) as info:
        build_index(path, "0" * 64)
    assert "\n" not in str(info.value)
