"""Cache hardening: hostile revisions, stamps that notice rewrites, prune and in-flight files.

Each test names, in its docstring, the defect of the earlier store it guards against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, make_manifest

from pytest_ckpts import ChecksumMismatchError, load_manifest
from pytest_ckpts.cache import Cache, contained
from pytest_ckpts.cli import main
from pytest_ckpts.errors import CacheError
from pytest_ckpts.manifest import CheckpointSpec
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

DATA = os.urandom(48 * 1024) + b"weights"
HOSTILE = "../../../../victim.txt"


def _spec(revision: str) -> CheckpointSpec:
    return CheckpointSpec(
        name="vae",
        filename="vae.ckpt",
        hf_path="weights/vae.ckpt",
        sha256=hashlib.sha256(DATA).hexdigest(),
        description="",
        repo=REPO,
        revision=revision,
        repo_type="model",
        size=None,
    )


def _files_outside(tmp_path: Path, cache: Path) -> set[Path]:
    """Every file under tmp_path that is not inside the cache (the hub's own files excluded)."""
    return {
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(cache) and p.suffix != ".yaml"
    }


# --------------------------------------------------------------------------- revisions


@pytest.mark.parametrize(
    "revision", [HOSTILE, "/etc/victim", "refs/../../x", "a//b", "a\\..\\b", "x\0y", ""]
)
def test_ref_path_refuses_revisions_leaving_the_cache(tmp_path: Path, revision: str) -> None:
    """The earlier store built ``refs/<revision>`` by plain joining: ``../..`` escaped it."""
    cache = Cache(tmp_path / "cache")
    with pytest.raises(CacheError, match="refusing revision") as info:
        cache.ref_path(_spec(revision))
    assert "\n" not in str(info.value)
    assert "Fix the manifest" in str(info.value)
    with pytest.raises(CacheError):
        contained(tmp_path / "cache", revision, what="revision")


@pytest.mark.parametrize("revision", ["main", "v1.2", "refs/pr/3", "feature/x"])
def test_real_revisions_stay_under_refs(tmp_path: Path, revision: str) -> None:
    cache = Cache(tmp_path / "cache")
    ref = cache.ref_path(_spec(revision))
    refs = tmp_path / "cache" / "hub" / "models--acme--ckpts" / "refs"
    assert ref == refs.joinpath(*revision.split("/"))
    assert ref.resolve().is_relative_to(refs.resolve())


def test_hostile_revision_writes_nothing_outside_the_cache(
    tmp_path: Path, project: Path, hub: LocalHub
) -> None:
    """A hub that has a branch named ``../../../../victim.txt`` answers the probe; the
    earlier store then wrote the commit to ``refs/../../../../victim.txt``, outside the
    cache. Now the revision is refused before any request is made."""
    manifest = load_manifest(make_manifest(project, hub, {"vae": DATA}))
    hub.add_files(REPO, {"weights/vae.ckpt": DATA}, revision=HOSTILE)
    cache = manifest.cache_dir
    before = _files_outside(tmp_path, cache)
    hub.stats.reset()
    store = Store(manifest)
    with pytest.raises(CacheError, match="refusing revision") as info:
        store.resolve(_spec(HOSTILE))
    assert HOSTILE in str(info.value)
    assert _files_outside(tmp_path, cache) == before
    assert not (cache.parent.parent / "victim.txt").exists()
    assert not (tmp_path / "victim.txt").exists()
    assert hub.stats.request_count == 0  # refused before asking the hub
    assert store.layout.cached_commit(_spec(HOSTILE)) is None  # reading a hostile ref: just absent


@pytest.mark.parametrize("revision", ["feature/x", "refs/pr/3", "v1.2"])
def test_branches_with_slashes_resolve_and_record_their_ref(
    project: Path, hub: LocalHub, revision: str
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"vae": b"x"}))
    commit = hub.add_files(REPO, {"weights/vae.ckpt": DATA}, revision=revision)
    spec = dataclasses.replace(manifest.get("vae"), revision=revision)
    spec = dataclasses.replace(spec, sha256=hashlib.sha256(DATA).hexdigest())
    ckpt = Store(manifest).resolve(spec)
    assert ckpt.path.read_bytes() == DATA
    assert ckpt.revision == commit
    ref = manifest.cache_dir / "hub" / "models--acme--ckpts" / "refs" / revision
    assert ref.read_text().strip() == commit
    # offline, the recorded ref finds the file again
    assert Store(manifest, offline=True).resolve(spec).source == "cached"


# --------------------------------------------------------------------------- stamps


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


# --------------------------------------------------------------------------- prune

_HOLD = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


@contextlib.contextmanager
def _held_lock(lock: Path) -> Iterator[int]:
    """Hold ``lock`` from another process (a download in flight); yields its pid."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            yield holder.pid
        finally:
            holder.communicate("\n", timeout=30)  # releases the lock and exits


def _incomplete_name(cache: Cache, spec: CheckpointSpec, pid: int) -> Path:
    """The partial file of a download of ``spec`` (named by file and commit, so the next
    download continues it; the lock tells in flight from abandoned); ``pid`` makes the
    commit of each test file distinct."""
    mine = cache.incomplete_path(spec, f"{pid:040x}")
    assert mine.name.startswith(f".{cache.lock_key(spec)}.")
    return mine


def test_prune_keeps_an_in_flight_download_and_removes_killed_ones(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier ``cache prune`` removed every ``.incomplete`` file: a download still
    running in another process lost its temp file under its feet. Now one is removed
    only when nobody holds the download's lock."""
    manifest_path = make_manifest(project, hub, {"vae": DATA, "ldm": DATA[::-1]})
    manifest = load_manifest(manifest_path)
    cache = Cache(manifest.cache_dir)
    Store(manifest).resolve(manifest.get("vae"))
    busy, dead = manifest.get("ldm"), manifest.get("vae")
    lock = cache.lock_path(busy)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _held_lock(lock) as pid:
        in_flight = _incomplete_name(cache, busy, pid)
        in_flight.parent.mkdir(parents=True, exist_ok=True)
        in_flight.write_bytes(b"half a download")
        killed = _incomplete_name(cache, dead, 999_999)  # its process is gone, lock free
        killed.write_bytes(b"abandoned")
        monkeypatch.chdir(project)
        out = io.StringIO()
        assert main(["cache", "info"], out=out) == 0
        assert f"incomplete download: {in_flight}" in out.getvalue()
        out = io.StringIO()
        assert main(["cache", "prune"], out=out) == 0
        assert in_flight.is_file(), out.getvalue()
        assert not killed.exists()
        assert f"removed {killed}" in out.getvalue()
        assert str(in_flight) not in out.getvalue()
    # the lock is free now: the download was killed, so prune may remove it
    assert main(["cache", "prune"], out=io.StringIO()) == 0
    assert not in_flight.exists()
    # the cached, verified file survived both prunes
    assert Store(load_manifest(manifest_path)).is_trusted(dead)


def test_prune_keeps_huggingface_hub_in_flight_file(project: Path, hub: LocalHub) -> None:
    """huggingface_hub's own ``<etag>.incomplete`` (locked under ``<cache>/.locks``)."""
    from filelock import FileLock

    manifest = load_manifest(make_manifest(project, hub, {"vae": DATA}))
    cache = Cache(manifest.cache_dir)
    blobs = cache.blobs(manifest.get("vae"))
    blobs.mkdir(parents=True)
    part = blobs / ("ab" * 32 + ".incomplete")
    part.write_bytes(b"part")
    lock = cache.hub / ".locks" / "models--acme--ckpts" / ("ab" * 32 + ".lock")
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):
        # prune in a second process: filelock is reentrant within this one
        code = (
            "import sys; from pathlib import Path\n"
            "from pytest_ckpts.cache import Cache\n"
            "from pytest_ckpts.manifest import load_manifest\n"
            "m = load_manifest(sys.argv[1])\n"
            "r = Cache(m.cache_dir).prune(m)\n"
            "print(len(r.removed_incomplete))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(manifest.path)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "0"
        assert part.is_file()
    result = cache.prune(manifest)
    assert result.removed_incomplete == [part]
    assert not part.exists()
