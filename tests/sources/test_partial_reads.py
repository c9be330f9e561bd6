"""Partial reads from mirrors: ``fetch_tensors`` / ``PartialReader`` read their ranges from
the first mirror that has the file, verified against the tensor index as from the hub."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.partial import PartialReader
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.mirror_servers import MotoS3, apply_env, fill_folder
from tests.partial_files import index, make_tensors, publish, safetensors_bytes

pytest.importorskip("safetensors")


@pytest.fixture
def tensors() -> dict[str, object]:
    return make_tensors()


@pytest.fixture
def data(tensors: dict[str, object]) -> bytes:
    return safetensors_bytes(tensors)  # type: ignore[arg-type]


@pytest.fixture
def manifest(project: Path, hub: LocalHub, data: bytes) -> Path:
    path = publish(project, hub, data)
    index(path)
    return path


def test_ranges_come_from_a_folder_mirror_with_no_hub_request(
    manifest: Path, hub: LocalHub, data: bytes, tensors: dict[str, object], tmp_path: Path
) -> None:
    import torch

    fill_folder(tmp_path / "m", {"llm": data})
    hub.stats.reset()
    m = load_manifest(manifest)
    got = PartialReader(Store(m, mirrors=(str(tmp_path / "m"),))).read(m.get("llm"), ["embed"])
    assert torch.equal(got.tensors["embed"], tensors["embed"])  # type: ignore[arg-type]
    assert hub.stats.request_count == 0
    assert 0 < got.nbytes < len(data)


def test_a_mirror_with_other_bytes_falls_back_to_the_hub(
    manifest: Path,
    hub: LocalHub,
    data: bytes,
    tensors: dict[str, object],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import torch

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / hashlib.sha256(data).hexdigest()).write_bytes(bytes(len(data)))
    hub.stats.reset()
    m = load_manifest(manifest)
    with caplog.at_level(logging.WARNING, logger="pytest_ckpts"):
        got = PartialReader(Store(m, mirrors=(str(tmp_path / "m"),))).read(m.get("llm"), ["norm"])
    assert torch.equal(got.tensors["norm"], tensors["norm"])  # type: ignore[arg-type]
    assert any("do not match its tensor index" in r.getMessage() for r in caplog.records)
    assert any(r.range for r in hub.stats.requests)


def test_ranges_from_an_s3_mirror(
    manifest: Path,
    hub: LocalHub,
    data: bytes,
    tensors: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    server = MotoS3().start()
    try:
        apply_env(server.env(), monkeypatch)
        fs = server.filesystem()
        fs.mkdir("partial-ckpts")
        fs.pipe(f"partial-ckpts/{hashlib.sha256(data).hexdigest()}", data)
        hub.stats.reset()
        m = load_manifest(manifest)
        store = Store(m, mirrors=("s3://partial-ckpts",))
        got = PartialReader(store).read(m.get("llm"), ["ids", "mask"])
    finally:
        server.stop()
    assert torch.equal(got.tensors["ids"], tensors["ids"])  # type: ignore[arg-type]
    assert hub.stats.request_count == 0
