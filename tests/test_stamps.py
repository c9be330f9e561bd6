"""Stamps (pytest_ckpts._stamps): a stamp vouches for a file only while it is the file that
was hashed (rewrites with the mtime put back and verify mismatches revoke it), and what a
warm resolve costs: the stamp log read once per cache, one realpath per checkpoint, torn
lines and concurrent appends, compaction. Costs are counted, not timed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_ckpts import ChecksumMismatchError, load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.cli import main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import SMALL, fetch_quietly, make_manifest

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


def _run_script(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_warm_resolve_reads_the_stamps_once_per_cache(project: Path, hub: LocalHub) -> None:
    """Each stamp was a JSON file opened and parsed per checkpoint (1 142 stamp reads in
    a 1000-checkpoint run). A fresh process now reads its cache's stamps in one go."""
    path = make_manifest(project, hub, SMALL, pinned=True)
    fetch_quietly(project)
    stamps = Cache(load_manifest(path).cache_dir).root / ".ckpts" / "stamps"
    out = _run_script(
        f"""
        import sys
        opened = []
        def audit(event, args):
            if event == "open" and str(args[0]).startswith({str(stamps)!r}):
                opened.append((str(args[0]), args[1]))
        sys.addaudithook(audit)
        from pytest_ckpts import load_manifest
        from pytest_ckpts.store import Store
        m = load_manifest({str(path)!r})
        for _ in range(3):  # three stores, as three library calls would build
            store = Store(m)
            sources = {{store.resolve(m.get(n)).source for n in m.entries}}
        print(len(opened), sorted(sources), sorted({{mode for _, mode in opened}}))
        """
    )
    assert out == ["1", "['cached']", "['r']"]  # one read, no write


def test_one_realpath_per_checkpoint_per_process(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Store._trusted`` and ``cache.trusted_stamp`` each resolved the snapshot link
    (two realpaths, ~49 lstat, per resolve)."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    fetch_quietly(project)
    calls: list[str] = []
    real = os.path.realpath

    def counting(path: object, *args: object, **kwargs: object) -> str:
        calls.append(os.fspath(path))  # type: ignore[arg-type]
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os.path, "realpath", counting)
    for _ in range(3):
        store = Store(manifest)
        for name in SMALL:
            assert store.resolve(manifest.get(name)).source == "cached"
    assert len(calls) <= len(SMALL)


def test_a_warm_resolve_reads_the_link_not_its_realpath(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process's warm resolve finds the blob's stamp from the link's own text (one
    ``readlink``), not a ``realpath`` (a dozen ``lstat`` per checkpoint)."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    fetch_quietly(project)
    from pytest_ckpts import _stamps

    _stamps._BLOBS.clear()  # what a new process knows
    calls: list[str] = []
    real = os.path.realpath

    def counting(path: object, *args: object, **kwargs: object) -> str:
        calls.append(os.fspath(path))  # type: ignore[arg-type]
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os.path, "realpath", counting)
    store = Store(manifest)
    for name in SMALL:
        assert store.resolve(manifest.get(name)).source == "cached"
    assert [c for c in calls if "snapshots" in c] == []  # (locating the cache: once per store)


def test_a_link_to_a_same_named_copy_is_not_trusted(project: Path, hub: LocalHub) -> None:
    """The link's text names the blob; a link to a copy elsewhere with the blob's name
    (another inode) finds no stamp that agrees: hashed, never trusted on the name."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    spec = manifest.get("c00")
    link = Store(manifest).resolve(spec).path
    blob = link.resolve()
    elsewhere = project / "elsewhere" / blob.name
    elsewhere.parent.mkdir()
    shutil.copy2(blob, elsewhere)
    from pytest_ckpts import _stamps

    _stamps._BLOBS.clear()
    link.unlink()
    link.symlink_to(elsewhere)
    assert not Store(manifest).is_trusted(spec)


def test_a_relinked_snapshot_is_judged_by_its_new_blob(project: Path, hub: LocalHub) -> None:
    """The realpath is remembered per process; a link pointed at another file since is
    noticed (another inode) and never trusted on the old blob's stamp."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    a, b = manifest.get("c00"), manifest.get("c01")
    store = Store(manifest)
    link = store.resolve(a).path
    other = store.resolve(b).path.resolve()
    assert Store(manifest).is_trusted(a)
    link.unlink()
    link.symlink_to(os.path.relpath(other, link.parent))  # c00 now shows c01's bytes
    assert not Store(manifest).is_trusted(a)
    again = Store(manifest).resolve(a)  # hashed, refused, downloaded again
    assert again.path.read_bytes() == SMALL["c00"]


def test_stamps_of_earlier_versions_still_vouch(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache stamped by an earlier version (one ``<blob>.json`` per file) is not
    re-hashed after an upgrade; its stamps move into the log as they are used."""
    import pytest_ckpts.store as store_mod

    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    fetch_quietly(project)
    cache = Cache(manifest.cache_dir)
    spec = manifest.get("c03")
    log = cache.stamp_path(spec, Path("unused"))
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    log.unlink()
    for entry in entries:
        old = {k: v for k, v in entry.items() if k != "blob"}
        (log.parent / f"{entry['blob']}.json").write_text(json.dumps(old))

    def no_hash(path: object) -> str:
        raise AssertionError("a stamped file must not be hashed again")

    monkeypatch.setattr(store_mod, "calculate_sha256", no_hash)
    hub.stats.reset()
    assert Store(manifest).resolve(spec).source == "cached"
    assert hub.stats.request_count == 0
    assert log.is_file()


def test_a_torn_stamp_line_costs_nothing_but_itself(project: Path, hub: LocalHub) -> None:
    """A writer killed mid-line (or a power cut) leaves half a line: it is ignored, the
    stamps appended after it are read, and a torn last line is not read again on every
    look-up."""
    path = make_manifest(project, hub, SMALL, pinned=True)
    manifest = load_manifest(path)
    fetch_quietly(project, "c00")
    log = Cache(manifest.cache_dir).stamp_path(manifest.get("c00"), Path("unused"))
    with open(log, "ab") as f:
        f.write(b'{"blob":"0123","size":10,"mtime_')  # no newline: a torn write
    fetch_quietly(project, "c01")
    with open(log, "ab") as f:
        f.write(b'{"blob":"4567","size":10,"mtime_')  # torn again, at the end this time
    out = _run_script(
        f"""
        import sys
        opened = []
        sys.addaudithook(lambda e, a: opened.append(a[0]) if e == "open" and a[0] == {str(log)!r} else None)
        import pytest_ckpts.store as s
        def no_hash(path):
            raise AssertionError("hashed")
        s.calculate_sha256 = no_hash
        from pytest_ckpts import load_manifest
        m = load_manifest({str(path)!r})
        for _ in range(3):
            store = s.Store(m, offline=True)
            print(store.resolve(m.get("c00")).source, store.resolve(m.get("c01")).source)
        print(len(opened))
        """
    )
    assert out == ["cached", "cached"] * 3 + ["1"]


def test_processes_appending_at_once_lose_no_stamp(project: Path, hub: LocalHub) -> None:
    """Four processes fetching different files into one cache append to one log; a
    fifth trusts every file without hashing."""
    files = {f"p{i:02d}": os.urandom(2048) + bytes([i]) for i in range(40)}
    path = make_manifest(project, hub, files, pinned=True)
    names = list(files)
    script = textwrap.dedent(
        f"""
        import sys
        from pytest_ckpts import load_manifest
        from pytest_ckpts.store import Store
        m = load_manifest({str(path)!r})
        store = Store(m)
        for name in sys.argv[1:]:
            store.resolve(m.get(name))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *names[i::4]], stderr=subprocess.PIPE)
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    out = _run_script(
        f"""
        import pytest_ckpts.store as s
        def no_hash(path):
            raise AssertionError("hashed")
        s.calculate_sha256 = no_hash
        from pytest_ckpts import load_manifest
        m = load_manifest({str(path)!r})
        store = s.Store(m, offline=True)
        print(sorted({{store.resolve(m.get(n)).source for n in m.entries}}))
        """
    )
    assert out == ["['cached']"]


def test_a_long_log_is_compacted(project: Path, hub: LocalHub) -> None:
    """Every re-hash appends a line; a log mostly made of superseded lines is rewritten
    with one line per blob when read."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    spec = manifest.get("c00")
    Store(manifest).resolve(spec)
    for _ in range(300):
        Store(manifest, rehash=True).resolve(spec)
    log = Cache(manifest.cache_dir).stamp_path(spec, Path("unused"))
    assert len([x for x in log.read_text().splitlines() if x.strip()]) > 300
    assert Store(manifest).is_trusted(spec)  # read: compacted
    assert len([x for x in log.read_text().splitlines() if x.strip()]) == 1
    assert Store(manifest).is_trusted(spec)


def test_a_stamp_log_replaced_with_the_same_inode_and_size_is_read_again(tmp_path: Path) -> None:
    """A restored cache can bring the log back with the inode number and the size this
    process saw last (tar/rsync/actions/cache into the same folder): stat says "same
    file", the bytes say otherwise, and the old stamps must not vouch for new files."""
    from pytest_ckpts._stamps import Stamp, StampLog

    path = tmp_path / "stamps.jsonl"
    log = StampLog(path)
    old = Stamp(sha256="a" * 64, size=1, mtime_ns=1, ctime_ns=1, ino=1)
    assert log.append("blob", old)
    assert log.get("blob") == old
    st = path.stat()
    text = path.read_text()
    assert text.count("a" * 64) == 1
    with open(path, "r+", encoding="ascii") as f:  # same inode, same size, other bytes
        f.write(text.replace("a" * 64, "b" * 64))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert path.stat().st_ino == st.st_ino
    assert path.stat().st_size == st.st_size
    got = log.get("blob")
    assert got is not None
    assert got.sha256 == "b" * 64
