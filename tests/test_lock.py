"""pytest_ckpts._lock: the download lock is the lock filelock (and so huggingface_hub) sees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.errors import CheckpointDownloadError
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import SMALL, make_manifest


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


def _hold(lock: Path, how: str) -> subprocess.Popen[str]:
    """A real process holding ``lock`` (through ``filelock``, or the store's own lock)
    until a line arrives on its stdin."""
    take = {
        "filelock": f"from filelock import FileLock\nwith FileLock({str(lock)!r}):\n",
        "store": f"from pytest_ckpts._lock import acquire\nif acquire(__import__('pathlib').Path({str(lock)!r}), 5):\n",
    }[how]
    code = f"import sys\n{take}    print('held', flush=True)\n    sys.stdin.readline()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("how", ["store", "filelock"])
def test_a_lock_timeout_names_the_holder_and_never_says_delete_it(
    project: Path, hub: LocalHub, how: str
) -> None:
    """Was: "If no other process is running, delete the lock file." An flock is freed
    when its holder ends, so a timeout means a live holder, and deleting the file lets a
    second download write beside it. Now: who holds it, and wait for it or stop it."""
    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    spec = manifest.get("c00")
    lock = Cache(manifest.cache_dir).lock_path(spec)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = _hold(lock, how)
    try:
        with pytest.raises(CheckpointDownloadError) as info:
            Store(manifest, lock_timeout=0.3).resolve(spec)
    finally:
        holder.communicate("\n", timeout=30)
    error = info.value
    who = f"process {holder.pid} on {os.uname().nodename}" if how == "store" else "another process"
    assert error.entry == "c00"
    assert error.cause == f"{who} holds the lock {lock}"
    assert [f.text for f in error.fixes] == [
        f"let {who} finish or stop it (the lock is freed when that process ends; "
        "deleting the lock file would let two downloads write the same file)"
    ]
    text = str(error)
    assert text.startswith("pytest-ckpts: timed out after 0.3s waiting for another process to ")
    assert "If no other process is running, delete the lock file" not in text
    assert "\n" not in text  # one line


def test_the_store_lock_signs_the_file_it_holds(tmp_path: Path) -> None:
    from pytest_ckpts._lock import acquire, holder

    path = tmp_path / "x.lock"
    path.write_text("a much longer text left by somebody before\n")
    lock = acquire(path, 1)
    try:
        assert holder(path) == f"process {os.getpid()} on {os.uname().nodename}"
    finally:
        lock.release()
    assert path.read_bytes() == b""  # free: signed by nobody (a copied cache names nobody)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path.write_text(f"{dead.stdout.strip()} {os.uname().nodename}\n")  # killed -9 holding it
    assert holder(path) is None
    path.write_text("4242 runner-7\n")  # another machine: cannot be checked, so named
    assert holder(path) == "process 4242 on runner-7"
    path.write_bytes(b"4242 \x1b[2Jrunner\n")  # a hostile copy: nothing of it is printed
    assert holder(path) is None
    (tmp_path / "junk.lock").write_bytes(b"\xff\x00 not a pid")
    assert holder(tmp_path / "junk.lock") is None
    assert holder(tmp_path / "missing.lock") is None


def test_waits_are_said_as_people_read_them() -> None:
    from pytest_ckpts._text import duration

    assert [duration(s) for s in (0, 0.3, 2.0, 45, 720, 6 * 3600)] == [
        "0s",
        "0.3s",
        "2s",
        "45s",
        "12 min",
        "6 h",
    ]
