"""Fetching through mirrors (pytest_ckpts.sources.fetch, docs/mirrors.md "What happens on a fetch"): the store against folder mirrors.

Real parts: the local hub over HTTP, real folders, the real huggingface_hub cache reader.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from pytest_ckpts import ChecksumMismatchError, load_manifest
from pytest_ckpts.settings import Settings
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest
from tests.mirror_servers import fill_folder

A = os.urandom(96 * 1024) + b"a"
B = os.urandom(64 * 1024) + b"b"


# --------------------------------------------------------------------------- templates


# --------------------------------------------------------------------------- settings


# --------------------------------------------------------------------------- store


def test_pinned_entry_found_on_a_folder_mirror_asks_the_hub_nothing(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A}, pinned=True))
    fill_folder(tmp_path / "mirror", {"a": A})
    hub.stats.reset()
    store = Store(manifest, mirrors=(str(tmp_path / "mirror"),))
    ckpt = store.resolve(manifest.get("a"))
    assert hub.stats.request_count == 0
    assert (ckpt.source, ckpt.mirror) == ("downloaded", f"{tmp_path}/mirror/{{sha256}}")
    assert ckpt.path.read_bytes() == A
    # in huggingface_hub's layout, as a download: the client's own cache reader finds it
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        REPO, "weights/a.ckpt", cache_dir=project / "checkpoints" / "hub", revision=ckpt.revision
    )
    assert found is not None
    assert Path(found) == ckpt.path
    assert ckpt.path.resolve().name == hashlib.sha256(A).hexdigest()
    # stamped: the next run trusts it without hashing or asking anyone
    again = Store(load_manifest(manifest.path), mirrors=(str(tmp_path / "mirror"),))
    assert again.resolve(manifest.get("a")).source == "cached"
    assert hub.stats.request_count == 0


def test_tampered_object_is_discarded_with_one_warning_and_the_next_source_serves(
    project: Path, hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    shas = fill_folder(tmp_path / "bad", {"a": A, "b": B})
    for sha in shas.values():
        (tmp_path / "bad" / sha).write_bytes(b"evil bytes")
    fill_folder(tmp_path / "good", {"a": A})
    hub.stats.reset()
    store = Store(manifest, mirrors=(f"file://{tmp_path}/bad", str(tmp_path / "good")))
    with caplog.at_level(logging.WARNING, logger="pytest_ckpts"):
        a = store.resolve(manifest.get("a"))
        b = store.resolve(manifest.get("b"))
    assert (a.mirror, a.path.read_bytes()) == (f"{tmp_path}/good/{{sha256}}", A)
    assert (b.mirror, b.source, b.path.read_bytes()) == (None, "downloaded", B)  # the hub
    assert hub.stats.bodies_served == 1
    warnings = [r.getMessage() for r in caplog.records if "served bytes" in r.getMessage()]
    assert len(warnings) == 1
    assert f"file://{tmp_path}/bad" in warnings[0]
    assert not list((project / "checkpoints").rglob("*.incomplete"))


def test_missing_object_moves_on_quietly_and_unverified_entries_skip_mirrors(
    project: Path, hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(
        make_manifest(project, hub, {"a": A, "b": B}, pinned=True, sha={"b": None})
    )
    (tmp_path / "empty").mkdir()
    fill_folder(tmp_path / "full", {"b": B})
    store = Store(manifest, mirrors=(str(tmp_path / "empty"), str(tmp_path / "full")))
    with caplog.at_level(logging.WARNING, logger="pytest_ckpts"):
        a = store.resolve(manifest.get("a"))
        b = store.resolve(manifest.get("b"))
    assert (a.mirror, a.source) == (None, "downloaded")
    assert (b.mirror, b.verified) == (None, False)  # no sha256: only the hub
    assert hub.stats.bodies_served == 2
    assert not caplog.records


def test_mirror_that_is_down_is_remembered_for_the_run(
    project: Path, hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    gone = tmp_path / "not-mounted"
    store = Store(manifest, mirrors=(str(gone),))
    with caplog.at_level(logging.WARNING, logger="pytest_ckpts"):
        store.resolve(manifest.get("a"))
        gone.mkdir()  # mounted now: the run already decided
        fill_folder(gone, {"b": B})
        b = store.resolve(manifest.get("b"))
    assert b.mirror is None
    assert hub.stats.bodies_served == 2
    down = [r.getMessage() for r in caplog.records]
    assert len(down) == 1
    assert "not mounted" in down[0]
    assert "not asked again" in down[0]
    assert store.mirror_set is not None
    assert store.mirror_set.dead(store.mirror_set.mirrors[0])


def test_hub_down_pinned_and_branch_entries_come_from_the_mirror(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    path = make_manifest(project, hub, {"a": A})  # branch "main"
    manifest = load_manifest(path)
    fill_folder(tmp_path / "m", {"a": A})
    commit = hub.commit_sha(REPO)
    endpoint = hub.endpoint
    hub.stop()
    ckpt = Store(manifest, mirrors=(str(tmp_path / "m"),)).resolve(manifest.get("a"))
    assert (ckpt.source, ckpt.path.read_bytes()) == ("downloaded", A)
    assert ckpt.revision == hashlib.sha256(A).hexdigest()[:40]  # stand-in: commit unknown
    # the next run finds it without the hub and without the mirror
    again = Store(load_manifest(path)).resolve(manifest.get("a"))
    assert (again.source, again.path.read_bytes()) == ("stale", A)
    # the hub is back: the real commit's link reuses the blob, no transfer
    with LocalHub(port=int(endpoint.rsplit(":", 1)[1])) as back:
        back.add_files(REPO, {"weights/a.ckpt": A})
        real = back.commit_sha(REPO)
        now = Store(load_manifest(path), mirrors=(str(tmp_path / "m"),)).resolve(manifest.get("a"))
        assert (now.revision, now.source, back.stats.bodies_served) == (real, "cached", 0)
    assert commit  # the first hub's commit differs from the restarted hub's: both fine


def test_mismatch_everywhere_is_still_a_checksum_error(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    manifest = load_manifest(
        make_manifest(project, hub, {"a": A}, pinned=True, sha={"a": "0" * 64})
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ("0" * 64)).write_bytes(b"not it")
    with pytest.raises(ChecksumMismatchError):
        Store(manifest, mirrors=(str(tmp_path / "m"),)).resolve(manifest.get("a"))


def test_credentials_in_mirror_urls_stay_out_of_every_repr(project: Path) -> None:
    path = make_manifest(
        project, None, {"a": A}, extra_config='  mirrors: ["https://u:hunter2@h.example/c"]'
    )
    manifest = load_manifest(path)
    settings = Settings.from_env({"PYTEST_CKPTS_MIRRORS": "https://k:hunter3@b.example/c"})
    store = Store.from_settings(manifest, settings)
    assert store.mirror_set is not None
    url = store.mirror_set.mirrors[0].url(manifest.get("a"))
    assert str(url).startswith("https://k:hunter3@")  # the real value is used
    for obj in (manifest, settings, store, store.mirror_set, url, manifest.mirrors):
        assert "hunter" not in repr(obj)


def test_cli_mirror_flag_and_force_download_fetch_from_the_mirror_again(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    import io

    from pytest_ckpts.cli import main

    path = make_manifest(project, hub, {"a": A}, pinned=True)
    fill_folder(tmp_path / "m", {"a": A})
    hub.stats.reset()
    out = io.StringIO()
    assert main(["--manifest", str(path), "--mirror", str(tmp_path / "m"), "fetch"], out=out) == 0
    assert f"(from mirror {tmp_path}/m/{{sha256}})" in out.getvalue()
    manifest = load_manifest(path)
    store = Store(manifest, mirrors=(str(tmp_path / "m"),))
    again = store.resolve(manifest.get("a"), force_download=True)
    assert (again.source, again.mirror) == ("downloaded", f"{tmp_path}/m/{{sha256}}")
    assert hub.stats.request_count == 0


def test_hasher_waits_for_bytes_still_in_the_writers_buffer(tmp_path: Path) -> None:
    """s3fs reports each chunk before its buffered file flushes it: the hash must wait."""
    import time

    from pytest_ckpts.sources.fetch import FileHasher

    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd to see the hasher open the file")
    path = tmp_path / "blob"
    data = os.urandom(100_000)

    def opened() -> int:
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))

    with open(path, "wb", buffering=1 << 20) as f:
        hasher = FileHasher(path)
        f.write(data)  # stays in the 1 MiB buffer until the file is closed
        hasher.advance(len(data))
        deadline = time.monotonic() + 30
        while opened() < 2:  # the hasher has the file open too: it reads and finds it empty
            assert time.monotonic() < deadline, "the hasher never held the file open"
            time.sleep(0.001)
        assert path.stat().st_size == 0
    assert hasher.finish() == (hashlib.sha256(data).hexdigest(), len(data))
