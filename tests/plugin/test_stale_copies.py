"""A cache restored by a copy while the hub is down (docs/explanation/verification.md "Stale copies").

``actions/cache``, rsync or a tar round trip restore the cache with new inodes and
ctimes and the same mtimes, often at another absolute path: no stamp vouches for the
files any more. With the hub reachable they are re-hashed and served; with the hub
down (connection refused, or the retry budget spent) they must be re-hashed once and
served as ``stale`` when they match, in every mode, and a copy that does not match is
a mismatch, never a skip. Tested from outside, as a user's CI sees it: a real pytest
process, the real client, the local hub, then a stopped hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_ckpts import CheckpointDownloadError, ChecksumMismatchError, load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.cli import main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

FILES = {name: os.urandom(24 * 1024) + name.encode() for name in ("vae", "ldm", "enc")}
TESTS = """
import pytest

@pytest.mark.requires_checkpoints("vae", "ldm")
def test_pair(checkpoints):
    assert checkpoints["vae"].path.read_bytes().endswith(b"vae")
    assert checkpoints["ldm"].path.read_bytes().endswith(b"ldm")

def test_lazy(checkpoint):
    assert checkpoint("enc").path.read_bytes().endswith(b"enc")

@pytest.mark.requires_checkpoints("vae")
def test_again(checkpoints):
    assert checkpoints["vae"].source == "stale"
"""
RUN = ("-p", "no:cacheprovider", "-p", "no:randomly")


def _tar_round_trip(src: Path, dest: Path, scratch: Path) -> None:
    """What ``actions/cache`` does: tar, then untar (new inodes and ctimes, same mtimes)."""
    archive = scratch / "cache.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=".")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()


def _copy(how: str, original: Path, dest: Path, scratch: Path) -> None:
    if how == "tar":
        _tar_round_trip(original, dest, scratch)
    else:  # copytree follows the snapshot links: every file becomes a plain copy
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(original, dest)


def _rows(report: Path) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}


def _fill(pytester: pytest.Pytester, hub: LocalHub, *, pinned: bool = False) -> Path:
    """The project's cache, filled from the local hub by ``pytest-ckpts fetch`` (in this
    process: the restored copies, not the filling, are what these tests look at)."""
    manifest = make_manifest(pytester.path, hub, FILES, pinned=pinned)
    assert main(["--manifest", str(manifest), "fetch", "-q"], out=io.StringIO()) == 0
    pytester.makepyfile(test_it=TESTS)
    return pytester.path / "checkpoints"


@pytest.fixture
def filled(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A project whose cache the local hub filled, kept aside as the "CI cache" copy."""
    original = tmp_path_factory.mktemp("saved") / "checkpoints"
    shutil.copytree(_fill(pytester, hub), original, symlinks=True)
    hub.stop()  # the same endpoint now refuses connections
    return original


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
@pytest.mark.parametrize("mode", ["auto", "require"])
@pytest.mark.parametrize("how", ["tar", "copytree"])
def test_restored_cache_with_the_hub_down_serves_every_file_stale(
    pytester: pytest.Pytester,
    filled: Path,
    how: str,
    mode: str,
    xdist: tuple[str, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """auto and require, with and without ``-n 2``: every row ``stale``, every test passes;
    ``copytree`` restores it at another absolute path (``--ckpts-cache-dir``). One pytest
    run per case (each case was one of four runs of one test: 43 s on 2 cores)."""
    manifest = load_manifest(pytester.path / "checkpoints" / "checkpoints.yaml")
    scratch = tmp_path_factory.mktemp("scratch")
    if how == "tar":  # same path, new inodes
        cache = pytester.path / "checkpoints"
        keep = (cache / "checkpoints.yaml").read_bytes()
        _copy(how, filled, cache, scratch)
        (cache / "checkpoints.yaml").write_bytes(keep)
        where: tuple[str, ...] = ()
    else:  # another absolute path
        cache = tmp_path_factory.mktemp("restored") / "cache"
        _copy(how, filled, cache, scratch)
        where = (f"--ckpts-cache-dir={cache}",)
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        *RUN, f"--ckpts={mode}", f"--ckpts-report={report}", *where, *xdist
    )
    result.assert_outcomes(passed=3)
    rows = _rows(report)
    assert sorted(rows) == ["enc", "ldm", "vae"]
    for name, row in rows.items():
        assert row["status"] == "stale", (name, row)
        assert "hub unreachable" in str(row["reason"]), row
        assert row["sha256"] == hashlib.sha256(FILES[name]).hexdigest()
    layout = Cache(cache)
    for spec in manifest.entries.values():  # the stamp was rewritten: trusted again
        path = layout.cached_path(spec)
        assert path is not None
        assert layout.trusted_stamp(spec, path) is not None


def test_restored_copy_that_does_not_match_is_a_mismatch_never_a_skip(
    pytester: pytest.Pytester, filled: Path
) -> None:
    cache = pytester.path / "checkpoints"
    keep = (cache / "checkpoints.yaml").read_bytes()
    _copy("tar", filled, cache, filled.parent)
    (cache / "checkpoints.yaml").write_bytes(keep)
    spec = load_manifest(cache / "checkpoints.yaml").get("vae")
    blob = Cache(cache).cached_path(spec)
    assert blob is not None
    target = blob.resolve()
    stat = target.stat()
    target.write_bytes(b"X" * stat.st_size)  # same size, same mtime: only the bytes differ
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for mode in ("auto", "require"):
        report = pytester.path / f"report-{mode}.json"
        result = pytester.runpytest_subprocess(*RUN, f"--ckpts={mode}", f"--ckpts-report={report}")
        result.assert_outcomes(passed=1, errors=2)
        result.stdout.fnmatch_lines(["*Checksum mismatch for checkpoint 'vae'*"])
        result.stdout.no_fnmatch_line("*SKIPPED*")
        rows = _rows(report)
        assert rows["vae"]["status"] == "failed"
        assert rows["ldm"]["status"] == "stale"


def test_pinned_copy_that_does_not_match_is_a_mismatch_when_the_hub_is_down(
    project: Path, hub: LocalHub
) -> None:
    """A pinned entry whose copy is corrupted would be downloaded again; the hub is down,
    so the answer is the mismatch (named with the hub's failure), not a hub error."""
    manifest = load_manifest(make_manifest(project, hub, {"vae": FILES["vae"]}, pinned=True))
    spec = manifest.get("vae")
    path = Store(manifest).resolve(spec).path
    hub.stop()
    path.resolve().write_bytes(b"Y" * len(FILES["vae"]))
    with pytest.raises(ChecksumMismatchError) as info:
        Store(manifest).resolve(spec)
    assert "hub unreachable" in str(info.value)
    assert "Checksum mismatch" in str(info.value)


def test_force_download_with_the_hub_down_exits_1_keeping_the_cached_copy(
    project: Path,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for pinned in (False, True):
        manifest = make_manifest(project, hub, {"vae": FILES["vae"]}, pinned=pinned)
        monkeypatch.chdir(project)
        assert main(["fetch", "-q", "vae"]) == 0
        capsys.readouterr()
        dead = dead_endpoint()
        manifest.write_text(manifest.read_text().replace(hub.endpoint, dead))
        assert main(["fetch", "-q", "--force", "vae"]) == 1
        out = capsys.readouterr().out
        assert out.startswith("FAILED"), out
        assert "cached copy is kept" in out
        assert "hub unreachable" in out
        path = Cache(project / "checkpoints").cached_path(load_manifest(manifest).get("vae"))
        assert path is not None
        assert path.read_bytes() == FILES["vae"]
        shutil.rmtree(project / "checkpoints" / "hub" / "models--acme--ckpts")


def test_spent_retry_budget_serves_the_restored_copy_with_one_probe_series(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The hub answers, but only 503: once the budget is spent the endpoint is given up
    for the whole run (controller and workers), and every restored file is ``stale``."""
    cache = _fill(pytester, hub)
    _tar_round_trip(cache, cache, tmp_path_factory.mktemp("scratch"))
    hub.stats.reset()
    hub.faults.fail_next(10_000, 503, path_contains="/api/models/")
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        *RUN, "--ckpts-retry-budget=0.5", f"--ckpts-report={report}", "-n", "2"
    )
    result.assert_outcomes(passed=3)
    rows = _rows(report)
    assert {r["status"] for r in rows.values()} == {"stale"}
    assert all("HTTP 503" in str(r["reason"]) for r in rows.values()), rows
    probes = hub.stats.count(path_contains="/api/models/")
    assert 1 <= probes <= 4, probes  # one series of retries for the run, not one per file
    assert hub.stats.count(method="GET", path_contains="weights/") == 0


def test_restored_pinned_copy_needs_no_hub_and_is_cached(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pinned commit is immutable: its restored copy is re-hashed and served as
    ``cached`` whether or not the hub answers (docs/explanation/verification.md "Stale copies")."""
    cache = _fill(pytester, hub, pinned=True)
    pytester.makepyfile(test_it=TESTS.replace('== "stale"', "is not None"))
    _tar_round_trip(cache, cache, tmp_path_factory.mktemp("scratch"))
    hub.stop()
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        *RUN, "--ckpts=require", f"--ckpts-report={report}", "-n", "2"
    )
    result.assert_outcomes(passed=3)
    assert {r["status"] for r in _rows(report).values()} == {"cached"}


def test_read_only_restored_copy_with_the_hub_down_is_stale(
    pytester: pytest.Pytester, filled: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A restored cache mounted read-only (no stamp can be written, no lock taken): each
    file is still re-hashed once per process and served ``stale``."""
    from tests.helpers import Mounts

    if shutil.which("mount") is None:
        pytest.skip("no mount command: a read-only cache needs a real mount")
    cache = tmp_path_factory.mktemp("ro") / "cache"
    _copy("tar", filled, cache, tmp_path_factory.mktemp("scratch"))
    helper = Mounts()
    try:
        helper.read_only(cache)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"mounting is not permitted here: {(exc.stderr or '').strip()}")
    try:
        report = pytester.path / "report.json"
        result = pytester.runpytest_subprocess(
            *RUN, f"--ckpts-cache-dir={cache}", f"--ckpts-report={report}", "-n", "2"
        )
        result.assert_outcomes(passed=3)
        assert {r["status"] for r in _rows(report).values()} == {"stale"}
    finally:
        helper.unmount_all()


DATA = os.urandom(48 * 1024) + b"ckpt"


VAE_LDM = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def test_stale_copy_is_used_when_the_branch_cannot_be_resolved(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    fresh = Store(manifest).resolve(manifest.get("a"))
    hub.faults.fail_next(50, 503, path_contains="/api/models/")
    store = Store(manifest, retry_budget=0.5)
    stale = store.resolve(manifest.get("a"))
    assert stale.source == "stale"
    assert stale.path.read_bytes() == DATA
    assert stale.revision == fresh.revision
    assert fresh.revision[:12] in store.stale_reasons["a"]
    assert "verified" in store.stale_reasons["a"]


def test_no_stale_copy_for_a_permanent_error(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    Store(manifest).resolve(manifest.get("a"))
    hub.faults.fail_next(5, 404, path_contains="/api/models/")
    with pytest.raises(CheckpointDownloadError):
        Store(manifest).resolve(manifest.get("a"))


def test_stale_copy_in_require_mode_passes_and_is_reported(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, VAE_LDM)
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            assert checkpoints["vae"].path.read_bytes().endswith(b"vae")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    hub.stop()  # the hub is gone: connection refused
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ckpts=require", "--ckpts-report", str(report)
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*0 cached, 1 stale*", "stale      vae: stale: commit *verified*"])
    (row,) = json.loads(report.read_text())["checkpoints"]
    assert row["status"] == "stale"
    assert "hub unreachable" in row["reason"]
