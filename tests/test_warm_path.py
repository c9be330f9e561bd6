"""The warm path and small files at the limit (issue 22): what a warm run, a warm resolve
and a cold fetch of small files may cost, counted in threads, reads, realpaths, fsyncs
and header builds rather than timed (the machine is shared)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.cli import main
from pytest_ckpts.errors import CheckpointDownloadError
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest

SMALL = {f"c{i:02d}": os.urandom(1000) + bytes([i]) for i in range(12)}


def _fetch(project: Path, *names: str) -> None:
    out = io.StringIO()
    code = main(
        ["--manifest", str(project / "checkpoints" / "checkpoints.yaml"), "fetch", "-q", *names],
        out=out,
    )
    assert code == 0, out.getvalue()


def _run_script(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


# --------------------------------------------------------------------------- prefetch


def test_a_warm_run_starts_no_prefetch_thread(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """Prefetch handed every checkpoint to its thread pool even when every file was
    stamped: 1000 futures, 4 threads fighting the main thread for the GIL, a warm run
    1.56x a plain hf_hub_download fixture. Warm pinned entries are now decided on the
    main thread from their stamps; the pool gets only what is missing."""
    make_manifest(pytester.path, hub, SMALL, pinned=True)
    names = list(SMALL)
    pytester.makeconftest(
        textwrap.dedent(
            """
            import threading

            SEEN = set()

            def pytest_runtest_call(item):
                SEEN.update(t.name for t in threading.enumerate())

            def pytest_terminal_summary(terminalreporter):
                prefetch = sorted(n for n in SEEN if n.startswith("ckpts-prefetch"))
                terminalreporter.write_line(f"prefetch threads: {len(prefetch)}")
            """
        )
    )
    pytester.makepyfile(
        test_it=textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.parametrize(
                "name",
                [pytest.param(n, marks=pytest.mark.requires_checkpoints(n)) for n in {names!r}],
            )
            def test_one(checkpoints, name):
                assert checkpoints[name].path.is_file()
            """
        )
    )
    cold = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    cold.assert_outcomes(passed=len(names))
    assert "prefetch threads: 0" not in cold.stdout.str()  # the cold run does use the pool
    hub.stats.reset()
    warm = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    warm.assert_outcomes(passed=len(names))
    warm.stdout.fnmatch_lines(["prefetch threads: 0", f"0 downloaded (*), {len(names)} cached*"])
    assert hub.stats.request_count == 0


def test_prefetch_pool_gets_only_the_missing(project: Path, hub: LocalHub) -> None:
    """Half the cache warm: the warm half resolves on the calling thread, the rest goes
    to the pool, and every checkpoint is handed out once with its events."""
    from pytest_ckpts.prefetch import Prefetcher
    from pytest_ckpts.store import NullObserver

    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    names = list(SMALL)
    _fetch(project, *names[:6])

    class Seen(NullObserver):
        def __init__(self) -> None:
            self.resolved: list[tuple[str, str]] = []

        def on_resolve(self, spec: object, checkpoint: object) -> None:
            self.resolved.append((checkpoint.name, checkpoint.source))  # type: ignore[attr-defined]

    seen = Seen()
    store = Store(manifest, observer=seen)
    prefetcher = Prefetcher(store, [manifest.get(n) for n in names], workers=2)
    try:
        assert [s.name for s in prefetcher.pending] == names[6:]
        assert seen.resolved == []  # nothing reported before a test asks
        for name in names:
            assert prefetcher.result(name, store).path.is_file()
    finally:
        prefetcher.close(seen)
    assert seen.resolved == [(n, "cached") for n in names[:6]] + [
        (n, "downloaded") for n in names[6:]
    ]


# --------------------------------------------------------------------------- warm resolve


def test_warm_resolve_reads_the_stamps_once_per_cache(project: Path, hub: LocalHub) -> None:
    """Each stamp was a JSON file opened and parsed per checkpoint (1 142 stamp reads in
    a 1000-checkpoint run). A fresh process now reads its cache's stamps in one go."""
    path = make_manifest(project, hub, SMALL, pinned=True)
    _fetch(project)
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
    _fetch(project)
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
    _fetch(project)
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


# --------------------------------------------------------------------------- the log


def test_a_torn_stamp_line_costs_nothing_but_itself(project: Path, hub: LocalHub) -> None:
    """A writer killed mid-line (or a power cut) leaves half a line: it is ignored, the
    stamps appended after it are read, and a torn last line is not read again on every
    look-up."""
    path = make_manifest(project, hub, SMALL, pinned=True)
    manifest = load_manifest(path)
    _fetch(project, "c00")
    log = Cache(manifest.cache_dir).stamp_path(manifest.get("c00"), Path("unused"))
    with open(log, "ab") as f:
        f.write(b'{"blob":"0123","size":10,"mtime_')  # no newline: a torn write
    _fetch(project, "c01")
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


# --------------------------------------------------------------------------- small files


def test_small_cold_files_cost_no_fsync_and_one_header_build(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per small file the fetch loop paid an fsync for the stamp (0.40 ms), a filelock
    (~0.9 ms) and a rebuild of the request headers (0.13 ms). Stamps are now appended
    (a lost one costs a re-hash), headers built once per client (our own User-Agent:
    huggingface_hub's ``build_hf_headers`` is never called, see ``_hf_state``)."""
    import huggingface_hub.utils as hf_utils

    from pytest_ckpts import hub_client

    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    fsyncs: list[int] = []
    builds: list[object] = []
    hf_builds: list[object] = []
    real_fsync, real_build = os.fsync, hub_client.user_agent

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def counting_build() -> str:
        builds.append(1)
        return real_build()

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(hub_client, "user_agent", counting_build)
    monkeypatch.setattr(hf_utils, "build_hf_headers", lambda *a, **k: hf_builds.append(k))
    store = Store(manifest)
    for name in SMALL:
        assert store.resolve(manifest.get(name)).source == "downloaded"
    assert hub.stats.bodies_served == len(SMALL)
    assert fsyncs == []
    assert len(builds) == 1
    assert hf_builds == []
    for name in SMALL:  # and every one of them is trusted by a new store
        assert Store(manifest).is_trusted(manifest.get(name))


def test_the_download_lock_is_the_lock_filelock_sees(project: Path, hub: LocalHub) -> None:
    """The store's lock is a bare flock now: a lock held through ``filelock`` (another
    version, ``cache prune``) still keeps it out, and the wait times out as before."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    spec = manifest.get("c00")
    lock = Cache(manifest.cache_dir).lock_path(spec)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys\nfrom filelock import FileLock\nwith FileLock({str(lock)!r}):\n"
            "    print('held', flush=True)\n    sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointDownloadError, match="timed out"):
            Store(manifest, lock_timeout=0.3).resolve(spec)
        assert hub.stats.bodies_served == 0
    finally:
        holder.communicate("\n", timeout=30)
    assert Store(manifest).resolve(spec).path.read_bytes() == SMALL["c00"]
    assert hashlib.sha256(SMALL["c00"]).hexdigest() == Store(manifest).resolve(spec).sha256


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
