"""The file side of a download (``_transfer``): folders made only when missing, the blob
handed to the stamp without a ``realpath``, and what stands in a folder's way named in
one line. Real client, real HTTP against the local hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pytest_ckpts import CacheError, load_manifest
from pytest_ckpts._stamps import blob_of
from pytest_ckpts.cache import Cache
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest

A = os.urandom(4096) + b"a"
B = os.urandom(4096) + b"b"


def test_download_stamps_the_blob_it_wrote_and_a_fresh_store_trusts_it(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    store = Store(manifest)
    got = [store.resolve(manifest.get(n)) for n in ("a", "b")]
    assert [c.source for c in got] == ["downloaded", "downloaded"]
    for ckpt, data in zip(got, (A, B), strict=True):
        assert ckpt.path.is_symlink()
        blob = Path(os.path.realpath(ckpt.path))
        assert blob.parent.name == "blobs"
        assert blob.read_bytes() == data
        assert blob_of(ckpt.path) == os.fspath(blob)  # what the download said it wrote
        stamp = store.layout.read_stamp(manifest.get(ckpt.name), blob)
        assert stamp is not None
        assert stamp.sha256 == hashlib.sha256(data).hexdigest()
        assert stamp.agrees(os.stat(blob))  # taken after the rename (ctime moves with it)
    hub.stats.reset()
    fresh = Store(load_manifest(manifest.path))
    assert [fresh.resolve(manifest.get(n)).source for n in ("a", "b")] == ["cached", "cached"]
    assert hub.stats.request_count == 0


def test_folders_removed_between_downloads_are_made_again(project: Path, hub: LocalHub) -> None:
    """Folders are made only when a write finds them missing; one removed by someone else
    (``cache prune``, a user) after the first download is made again."""
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    store = Store(manifest)
    store.resolve(manifest.get("a"))
    repo = store.layout.repo_dir(manifest.get("a"))
    for sub in ("blobs", "snapshots"):
        for p in sorted((repo / sub).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        (repo / sub).rmdir()
    ckpt = store.resolve(manifest.get("b"))
    assert ckpt.source == "downloaded"
    assert ckpt.path.read_bytes() == B


@pytest.mark.parametrize("blocked", ["blobs", "snapshots"])
def test_a_file_where_a_cache_folder_belongs_is_one_line(
    project: Path, hub: LocalHub, blocked: str
) -> None:
    """Folders are no longer made before the transfer: a file in the way of ``blobs/`` or
    ``snapshots/`` still fails as one line naming it, and leaves no partial file."""
    manifest = load_manifest(make_manifest(project, hub, {"a": A}, pinned=True))
    spec = manifest.get("a")
    store = Store(manifest)
    repo = store.layout.repo_dir(spec)
    repo.mkdir(parents=True)
    (repo / blocked).write_text("not a folder")
    with pytest.raises(CacheError) as info:
        store.resolve(spec)
    message = str(info.value)
    assert "\n" not in message
    assert f"{repo / blocked} exists but is not a directory; remove it" in message
    leftovers = [p for p in repo.rglob("*") if p.name.endswith(".incomplete")]
    assert leftovers == []
    assert Cache(store.layout.root).repo_dir(spec) == repo
    assert REPO.replace("/", "--") in repo.name
