"""pytest_ckpts._lock: the download lock is the lock filelock (and so huggingface_hub) sees."""

from __future__ import annotations

import hashlib
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
