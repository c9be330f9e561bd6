"""The verified store against the local hub: real huggingface_hub client, real HTTP."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_ckpts import (
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    load_manifest,
)
from pytest_ckpts.store import NullObserver, Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, dead_endpoint, make_manifest

DATA = os.urandom(64 * 1024) + b"weights"


def test_fetch_verifies_and_warm_pinned_resolve_makes_no_request(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"vae": DATA}, pinned=True))
    store = Store(manifest)
    ckpt = store.resolve(manifest.get("vae"))
    assert ckpt.path.read_bytes() == DATA
    assert ckpt.sha256 == hashlib.sha256(DATA).hexdigest()
    assert (ckpt.source, ckpt.verified, ckpt.size) == ("downloaded", True, len(DATA))
    assert ckpt.revision == hub.commit_sha(REPO)
    assert ckpt.path.is_relative_to(project / "checkpoints")
    assert os.fspath(ckpt) == str(ckpt.path)
    assert hub.stats.bodies_served == 1

    hub.stats.reset()
    again = Store(load_manifest(manifest.path)).resolve(manifest.get("vae"))
    assert again.path == ckpt.path
    assert again.source == "cached"
    assert hub.stats.request_count == 0


def test_warm_branch_resolve_costs_one_probe_and_no_rehash(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA, "b": DATA[::-1]}))
    Store(manifest).resolve(manifest.get("a"))
    Store(manifest).resolve(manifest.get("b"))
    hub.stats.reset()
    import pytest_ckpts.store as store_mod

    def no_hash(path: object) -> str:
        raise AssertionError("warm resolve must trust the stamp, not re-hash")

    monkeypatch.setattr(store_mod, "calculate_sha256", no_hash)
    store = Store(manifest)
    assert store.resolve(manifest.get("a")).source == "cached"
    assert store.resolve(manifest.get("b")).source == "cached"
    assert hub.stats.request_count == 1  # one revision probe for the repo, no HEAD per file


def test_unverified_entry_is_hashed_once_and_reported(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, sha={"a": None}))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.verified is False
    assert ckpt.sha256 == hashlib.sha256(DATA).hexdigest()


def test_upstream_content_changed_is_a_checksum_mismatch(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.add_file(REPO, "weights/a.ckpt", b"retrained weights")
    with pytest.raises(ChecksumMismatchError, match="Checksum mismatch") as info:
        Store(manifest).resolve(manifest.get("a"))
    message = str(info.value)
    assert hashlib.sha256(DATA).hexdigest() in message
    assert hashlib.sha256(b"retrained weights").hexdigest() in message
    assert "'a'" in message
    assert isinstance(info.value, ValueError)
    # the bad download is not left behind to be trusted later
    assert not Store(manifest).is_trusted(manifest.get("a"))


def test_flipped_byte_in_cached_blob_is_downloaded_again(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    blob = ckpt.path.resolve()
    corrupted = bytearray(blob.read_bytes())
    corrupted[100] ^= 0xFF
    blob.write_bytes(bytes(corrupted))
    hub.stats.reset()
    again = Store(manifest).resolve(manifest.get("a"))
    assert again.path.read_bytes() == DATA
    assert again.source == "downloaded"
    assert hub.stats.bodies_served == 1


def test_corrupted_cache_offline_is_an_error_not_a_skip(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    ckpt.path.resolve().write_bytes(b"x" * len(DATA))
    hub.stats.reset()
    with pytest.raises(ChecksumMismatchError):
        Store(manifest, offline=True).resolve(manifest.get("a"))
    assert hub.stats.request_count == 0


def test_offline_missing_is_skipped_without_network(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    with pytest.raises(CheckpointSkipped, match="offline"):
        Store(manifest, offline=True).resolve(manifest.get("a"))
    assert hub.stats.request_count == 0


def test_download_cut_mid_body_is_resumed_with_a_range_request(
    project: Path, hub: LocalHub
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    manifest = load_manifest(make_manifest(project, hub, {"a": data}))
    hub.faults.drop_next(1, after_bytes=512 * 1024, path_contains="weights/a.ckpt")
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == data
    assert ckpt.source == "downloaded"
    ranges = [r.range for r in hub.stats.requests if r.body]
    assert ranges[0] is None
    assert ranges[1] is not None
    assert ranges[1].startswith("bytes=")
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0


def test_download_cut_with_no_budget_fails_and_leaves_nothing(project: Path, hub: LocalHub) -> None:
    data = os.urandom(2 * 1024 * 1024)
    manifest = load_manifest(make_manifest(project, hub, {"a": data}))
    hub.faults.drop_next(1, after_bytes=512 * 1024, path_contains="weights/a.ckpt")
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest, retry_budget=0).resolve(manifest.get("a"))
    assert "weights/a.ckpt" in str(info.value)
    assert "retry budget" in str(info.value)
    assert info.value.kind == "transient"
    leftovers = [p.name for p in (project / "checkpoints").rglob("*") if p.is_file()]
    assert not [n for n in leftovers if n.endswith(".incomplete")], leftovers
    assert not Store(manifest).is_trusted(manifest.get("a"))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == data


def test_corrupted_transfer_is_rejected(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.faults.corrupt_next(1, path_contains="weights/a.ckpt")
    with pytest.raises(ChecksumMismatchError):
        Store(manifest).resolve(manifest.get("a"))
    assert Store(manifest).resolve(manifest.get("a")).path.read_bytes() == DATA


def test_unreachable_hub_fails_fast_naming_repo_path_revision_cause(project: Path) -> None:
    endpoint = dead_endpoint()
    manifest = load_manifest(make_manifest(project, None, {"a": DATA}, endpoint=endpoint))
    started = time.monotonic()
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest).resolve(manifest.get("a"))
    assert time.monotonic() - started < 10
    message = str(info.value)
    for part in (REPO, "weights/a.ckpt", "'main'", endpoint, "unreachable", "Connection"):
        assert part in message
    assert info.value.unreachable


def test_auth_error_never_contains_the_token(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_SeCrEtToKeN1234567890"
    with LocalHub(token="hf_the_right_token") as hub:
        manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, pinned=True))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # the machine's endpoint gets the token
        monkeypatch.setenv("HF_TOKEN", secret)
        with pytest.raises(CheckpointDownloadError) as info:
            Store(manifest).resolve(manifest.get("a"))
        assert secret not in str(info.value)
        assert "HF_TOKEN" in str(info.value)
        monkeypatch.setenv("HF_TOKEN", "hf_the_right_token")
        assert Store(manifest).resolve(manifest.get("a")).path.read_bytes() == DATA


def test_missing_file_names_hf_path(project: Path, hub: LocalHub) -> None:
    path = make_manifest(project, hub, {"a": DATA})
    path.write_text(path.read_text().replace("weights/a.ckpt", "weights/nope.ckpt"))
    manifest = load_manifest(path)
    with pytest.raises(CheckpointDownloadError, match="hf_path"):
        Store(manifest).resolve(manifest.get("a"))


@pytest.mark.parametrize("how", ["in place", "rm and copy"])
def test_rewrite_that_restores_mtime_is_not_trusted(project: Path, hub: LocalHub, how: str) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, pinned=True))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    blob = ckpt.path.resolve()
    st = blob.stat()
    flipped = bytearray(blob.read_bytes())
    flipped[0] ^= 1
    if how == "rm and copy":
        blob.unlink()  # ext4 hands the same inode to the next file
    blob.write_bytes(bytes(flipped))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))  # forge the stamp's mtime
    assert blob.stat().st_size == st.st_size
    assert not Store(manifest).is_trusted(manifest.get("a"))  # ctime gives it away
    again = Store(manifest).resolve(manifest.get("a"))
    assert again.source == "downloaded"
    assert again.path.read_bytes() == DATA


def test_rehash_hashes_every_file_once(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, pinned=True))
    Store(manifest).resolve(manifest.get("a"))
    seen: list[str] = []

    class Count(NullObserver):
        def on_verify(self, spec: object, path: Path, sha256: str, ok: bool, s: float) -> None:
            seen.append(sha256)

    store = Store(manifest, rehash=True, observer=Count())
    assert store.resolve(manifest.get("a")).source == "cached"
    assert store.resolve(manifest.get("a")).source == "cached"
    assert seen == [hashlib.sha256(DATA).hexdigest()]  # hashed once, then trusted


@pytest.mark.slow
def test_four_processes_one_download(project: Path, hub: LocalHub) -> None:
    data = os.urandom(20 * 1024 * 1024)
    path = make_manifest(project, hub, {"big": data})
    hub.faults.delay(0.5, path_contains="weights/big.ckpt")  # widen the race window
    script = textwrap.dedent(
        f"""
        import os
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        from pytest_ckpts import load_manifest
        from pytest_ckpts.store import NullObserver, Store
        m = load_manifest({str(path)!r})
        ckpt = Store(m).resolve(m.get("big"))
        print(ckpt.source, ckpt.sha256, ckpt.path)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [o[0].split() for o in outs]
    digest = hashlib.sha256(data).hexdigest()
    assert {r[1] for r in results} == {digest}
    assert sorted(r[0] for r in results) == ["cached", "cached", "cached", "downloaded"]
    assert hub.stats.bodies_served == 1
    assert Path(results[0][2]).read_bytes() == data


def test_fresh_download_is_hashed_while_it_streams(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_ckpts.store as store_mod

    def no_second_pass(path: object) -> str:
        raise AssertionError("a fresh download must not be read a second time to hash it")

    monkeypatch.setattr(store_mod, "calculate_sha256", no_second_pass)
    data = os.urandom(9 * 1024 * 1024)
    manifest = load_manifest(make_manifest(project, hub, {"a": data}))
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.sha256 == hashlib.sha256(data).hexdigest()
    assert ckpt.verified


def test_resumed_download_that_mismatches_is_fetched_whole_once_more(
    project: Path, hub: LocalHub
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    manifest = load_manifest(make_manifest(project, hub, {"a": data}))
    hub.faults.corrupt_next(1, path_contains="weights/a.ckpt")  # bad first part...
    hub.faults.drop_next(1, after_bytes=1024 * 1024, reset=False)  # ...cut, then resumed
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == data
    bodies = [r.range for r in hub.stats.requests if r.body]
    assert len(bodies) == 3, bodies  # cut, resumed (mismatch), whole again
    assert bodies[1] is not None
    assert bodies[2] is None


def test_a_copy_of_a_store_does_not_locate_its_cache_again(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefetch copies the store per checkpoint (``dataclasses.replace``, each copy with
    its own event recorder); every copy located the cache again (two ``realpath`` and the
    environment read: ~5x a warm resolve, per checkpoint of a warm run). A copy keeps the
    cache it was made from; one given another ``cache_dir`` still locates that one."""
    import dataclasses

    from pytest_ckpts.cache import Cache

    manifest = load_manifest(make_manifest(project, hub, {"vae": DATA}, pinned=True))
    store = Store(manifest)
    calls: list[object] = []
    real = Cache.locate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Cache], *args: object, **kwargs: object) -> Cache:
        calls.append(args)
        return real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Cache, "locate", classmethod(counting))
    copies = [dataclasses.replace(store, observer=NullObserver()) for _ in range(5)]
    assert calls == []
    for copy in copies:
        assert (copy.layout.root, copy.layout.hub) == (store.layout.root, store.layout.hub)
        assert copy.resolve(manifest.get("vae")).path.read_bytes() == DATA
    elsewhere = dataclasses.replace(store, cache_dir=project / "elsewhere")
    assert len(calls) == 1
    assert elsewhere.layout.root == project / "elsewhere"
