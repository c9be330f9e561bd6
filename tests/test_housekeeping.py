"""Cache housekeeping (pytest_ckpts._housekeeping): prune keeps in-flight downloads, ours and huggingface_hub's, and removes what killed processes left."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.cli import main
from pytest_ckpts.manifest import CheckpointSpec
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

DATA = os.urandom(48 * 1024) + b"weights"


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


FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def test_run_records_are_removed_after_the_run_and_by_prune(pytester: pytest.Pytester) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            pass
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2").assert_outcomes(skipped=1)
    runs = pytester.path / "checkpoints" / ".ckpts" / "runs"
    assert not [p for p in runs.glob("*") if p.is_file()]  # the run removed its record
    # a crashed run leaves its record behind: prune removes it once it is a day old
    runs.mkdir(parents=True, exist_ok=True)
    old, fresh = runs / "old.json", runs / "fresh.json"
    old.write_text("{}")
    fresh.write_text("{}")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    manifest = pytester.path / "checkpoints" / "checkpoints.yaml"
    assert main(["--manifest", str(manifest), "cache", "prune"]) == 0
    assert not old.exists()
    assert fresh.exists()
