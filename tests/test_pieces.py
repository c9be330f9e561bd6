"""Cached pieces of partial reads (pytest_ckpts._pieces): a corrupted piece is read again online, in a read-only cache too, and is one line offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_ckpts import ChecksumMismatchError
from pytest_ckpts.testing import LocalHub
from tests import partial_files
from tests.helpers import Mounts
from tests.partial_files import (
    assert_one_line,
    index_rows,
    make_tensors,
    read_tensors,
    served_bytes,
)

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")


Doc = dict[str, Any]


data = partial_files.data  # shared fixtures (tests/partial_files.py)
manifest = partial_files.manifest


def test_corrupted_piece_in_a_read_only_cache(
    manifest: Path,
    hub: LocalHub,
    mounts: Mounts,
) -> None:
    """Online: read that range from the hub again, keep nothing. Offline: one line."""
    read_tensors(manifest, ["ids"])
    row = index_rows(manifest)["ids"]
    piece = next(
        p
        for p in (manifest.parent / ".ckpts" / "tensors").rglob("*.bin")
        if p.stem == row["sha256"]
    )
    bad = b"x" + piece.read_bytes()[1:]
    piece.write_bytes(bad)
    mounts.read_only(manifest.parent)
    hub.stats.reset()
    got = read_tensors(manifest, ["ids"])
    assert got.source == "downloaded"
    assert torch.equal(got.tensors["ids"], make_tensors()["ids"])
    assert served_bytes(hub) == row["end"] - row["begin"]
    assert piece.read_bytes() == bad  # nothing kept, nothing removed
    hub.stats.reset()
    with pytest.raises(ChecksumMismatchError) as info:
        read_tensors(manifest, ["ids"], offline=True)
    assert_one_line(info.value, "tensor 'ids'", "checkpoint 'llm'", str(piece), "read-only")
    assert hub.stats.request_count == 0


def test_corrupted_piece_offline_in_a_writable_cache_is_one_line(
    manifest: Path, hub: LocalHub
) -> None:
    read_tensors(manifest, ["ids"])
    row = index_rows(manifest)["ids"]
    piece = next(
        p
        for p in (manifest.parent / ".ckpts" / "tensors").rglob("*.bin")
        if p.stem == row["sha256"]
    )
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(ChecksumMismatchError) as info:
        read_tensors(manifest, ["ids"], offline=True)
    assert_one_line(info.value, "tensor 'ids'", "checkpoint 'llm'", "removed")
    assert not piece.exists()
