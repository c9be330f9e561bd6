"""Stamps (pytest_ckpts._stamps): a stamp vouches for a file only while it is the file that was hashed; rewrites with the mtime put back and verify mismatches revoke it."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest

from pytest_ckpts import ChecksumMismatchError, load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.cli import main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest

DATA = os.urandom(48 * 1024) + b"weights"


def _warm(project: Path, hub: LocalHub) -> tuple[Path, Path]:
    manifest_path = make_manifest(project, hub, {"vae": DATA})
    manifest = load_manifest(manifest_path)
    ckpt = Store(manifest).resolve(manifest.get("vae"))
    assert Store(manifest).is_trusted(manifest.get("vae"))
    time.sleep(0.05)  # past the file system's timestamp granularity
    return manifest_path, ckpt.path.resolve()


def _flipped(data: bytes) -> bytes:
    out = bytearray(data)
    out[100] ^= 0xFF
    return bytes(out)


def test_in_place_rewrite_with_mtime_restored_is_not_trusted(project: Path, hub: LocalHub) -> None:
    """The earlier stamp held (size, mtime, inode): an in-place rewrite of the same size
    whose mtime was put back kept the same inode, so the stamp still vouched for it and
    the changed bytes were handed to tests unhashed. ctime (set only by the kernel)
    now gives it away."""
    manifest_path, blob = _warm(project, hub)
    st = blob.stat()
    with open(blob, "r+b") as f:
        f.write(_flipped(DATA))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = blob.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )
    manifest = load_manifest(manifest_path)
    spec = manifest.get("vae")
    assert not Store(manifest).is_trusted(spec)
    hub.stats.reset()
    ckpt = Store(manifest).resolve(spec)  # hashed, found corrupted, downloaded again
    assert ckpt.path.read_bytes() == DATA
    assert hub.stats.bodies_served == 1


def test_rm_and_copy_with_mtime_restored_is_not_trusted(project: Path, hub: LocalHub) -> None:
    """``rm`` + copy of a same-size file with the old mtime (``cp -p``): the earlier stamp
    could match when the file system reused the inode number."""
    manifest_path, blob = _warm(project, hub)
    st = blob.stat()
    other = project / "other.bin"
    other.write_bytes(_flipped(DATA))
    blob.unlink()
    shutil.copyfile(other, blob)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    manifest = load_manifest(manifest_path)
    assert not Store(manifest).is_trusted(manifest.get("vae"))
    assert Store(manifest).resolve(manifest.get("vae")).path.read_bytes() == DATA


def test_verify_mismatch_revokes_the_stamp(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest-ckpts verify`` reported a MISMATCH but left the stamp in place: it kept
    vouching for the file (the earlier store wrote stamps only on success and never
    removed one), so a run whose stat matched the stamp used the bad bytes. Now a
    mismatch deletes the stamp, and the next run hashes again and re-downloads."""
    manifest_path, blob = _warm(project, hub)
    manifest = load_manifest(manifest_path)
    spec = manifest.get("vae")
    stamp = Cache(manifest.cache_dir).stamp_path(spec, blob)
    assert stamp.is_file()
    st = blob.stat()
    with open(blob, "r+b") as f:
        f.write(_flipped(DATA))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.chdir(project)
    out = io.StringIO()
    assert main(["verify"], out=out) == 1
    assert "MISMATCH" in out.getvalue()
    assert not stamp.exists()
    assert not Store(load_manifest(manifest_path)).is_trusted(spec)
    # offline, the file is hashed again and refused, never handed out
    with pytest.raises(ChecksumMismatchError):
        Store(load_manifest(manifest_path), offline=True).resolve(spec)
    hub.stats.reset()
    assert Store(load_manifest(manifest_path)).resolve(spec).path.read_bytes() == DATA
    assert hub.stats.bodies_served == 1
